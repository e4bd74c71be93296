"""Suite-wide settings, applied before any test module imports the package.

- No hub access in tests (DATA.md): datasets / huggingface_hub stay offline.
- Without CUDA, Triton kernels can only run under the interpreter, and TRITON_INTERPRET must be set
  before ``mhc_repro.kernels`` decorates them — whichever test directory imports them first.
"""

import os

import torch

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
