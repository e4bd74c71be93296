"""Experimental post_res + next projection kernel (kernels/cross_layer.py) against the reference:
the output stream as post_res computes it, and m / Σx² as the projection computes them from that
(rounded) stream; odd C, n = 1..8, token counts off the block size; fp32 and bf16 streams."""

from __future__ import annotations

import pytest
import torch

from mhc_repro.residual import mhc_ops


@pytest.fixture
def cross(fused):  # fused: the interpreter set-up of the conftest
    from mhc_repro.kernels import cross_layer

    return cross_layer


def _inputs(N, n, C, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    M = n * n + 2 * n
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    h_res = torch.rand(N, n, n, generator=g)
    return (r(N, n, C).to(device, dtype), r(N, C).to(device, dtype), (2 * torch.rand(N, n, generator=g)).to(device),
            (h_res / h_res.sum(-1, keepdim=True)).to(device), (r(n * C, M) / C**0.5).to(device))


def _rel(a, b):
    return ((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("N,n,C", [(37, 4, 67), (5, 1, 33), (19, 2, 48), (11, 8, 24), (45, 3, 16)])
@pytest.mark.parametrize("dtype,precision,tol", [(torch.float32, "bf16x2", 2e-3), (torch.bfloat16, "bf16x2", 1e-5),
                                                 (torch.bfloat16, "bf16", 1e-2)])
def test_matches_post_res_then_projection(cross, device, N, n, C, dtype, precision, tol):
    x, f, hp, hr, phi = _inputs(N, n, C, dtype, device, seed=N * C + n)
    out, m, ss = cross.launch_post_res_proj(x, f, hp, hr, phi, precision)
    ref_out = mhc_ops.mhc_post_res(x.double(), f.double(), hp.double(), hr.double())
    assert out.dtype == dtype and _rel(out, ref_out) < (1e-6 if dtype == torch.float32 else 4e-3)
    v = out.double().reshape(N, n * C)  # the projection of the stream as stored
    assert _rel(m, v @ phi.double()) < tol  # fp32 stream: tf32 products
    assert _rel(ss, v.square().sum(1)) < 1e-6


def test_bad_phi_shape(cross):
    x = torch.zeros(3, 2, 8)
    with pytest.raises(ValueError, match=r"phi_next shape \(15, 8\) is invalid; expected \(16, M\)"):
        cross.launch_post_res_proj(x, torch.zeros(3, 8), torch.zeros(3, 2), torch.zeros(3, 2, 2), torch.zeros(15, 8))
