"""Suite-wide settings, applied before any test module imports the package.

- No hub access in tests (DATA.md): datasets / huggingface_hub stay offline.
- Without CUDA, Triton kernels can only run under the interpreter, and TRITON_INTERPRET must be set
  before ``mhc_repro.kernels`` decorates them — whichever test directory imports them first.
"""

import os

import pytest
import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def triton_cpu() -> None:
    """Skip unless the fused Triton kernels can run on CPU tensors here (Triton installed, interpreter on)."""
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 (set above when CUDA is absent)")
