"""The kernel modules import in either order (fused and linked reference each other)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("first", ["linked", "fused", "cross_layer"])
def test_kernel_modules_import_in_any_order(first):
    """fused builds namespaces that reference linked's functions at import: importing linked first
    must work too (it did not, and the benchmark's first import was linked)."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET", "1"))
    code = (f"import mhc_repro.kernels.{first}; from mhc_repro.kernels import fused; "
            "fused.ops().mhc_pre_linked; fused.ops().mhc_post_res_proj_linked")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-500:]
