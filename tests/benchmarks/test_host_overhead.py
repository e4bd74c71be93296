"""benchmarks/host_overhead.py: the sub-layer runs with every Triton kernel stubbed, each launch counted
once per forward and backward, and the real kernels are back afterwards."""

import os
import sys

import pytest

pytest.importorskip("triton")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import host_overhead  # noqa: E402


def test_counts_the_launches_of_one_sublayer_and_restores_the_kernels():
    from triton.runtime.jit import KernelInterface

    from mhc_repro.kernels import coef_kernels, stream_kernels

    res = host_overhead.main(["--n", "2", "--C", "64", "--repeat", "2"])
    k = res["kernels"]
    # forward: projection, coefficients, the fused norm's pre, post_res; backward: their backward kernels
    for name in ("proj_fwd", "coef_fwd", "pre_norm_fwd", "post_res_fwd", "coef_bwd", "pre_norm_bwd"):
        assert k.get(name) == 1, (name, k)
    assert res["triton_launches"] == sum(k.values()) and res["host_us_per_sublayer"] > res["host_us_forward"] > 0
    assert isinstance(coef_kernels.proj_fwd, KernelInterface) and isinstance(stream_kernels.post_res_fwd, KernelInterface)
