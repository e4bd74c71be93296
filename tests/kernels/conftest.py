"""Kernel tests run the Triton kernels on CPU through the interpreter when CUDA is absent.

TRITON_INTERPRET must be set before ``mhc_repro.kernels.fused`` (which decorates the kernels) is
imported, so it is set here, at collection time. On a CUDA machine it is left alone and the
CPU-interpreter cases skip; the ``gpu``-marked cases run instead.
"""

from __future__ import annotations

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not INTERPRET, reason="needs TRITON_INTERPRET=1 (no CUDA)")),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")]),
]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def fused():
    pytest.importorskip("triton")
    import importlib

    from mhc_repro.kernels import coef_kernels, dx_kernels, fused as mod, norm_kernels, stream_kernels

    # If something imported the kernels before this conftest set TRITON_INTERPRET, re-decorate them
    # in place (fused looks them up through the module at call time).
    if INTERPRET and type(coef_kernels.proj_fwd).__name__ != "InterpretedFunction":
        importlib.reload(coef_kernels)
        importlib.reload(dx_kernels)  # after coef_kernels: it imports its _mma
        importlib.reload(stream_kernels)
        importlib.reload(norm_kernels)
    return mod


@pytest.fixture(scope="session")
def launch(fused):
    """The module holding the launchers and their tiles (what a tile variant patches)."""
    from mhc_repro.kernels import launch as mod

    return mod
