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


def _two_sublayers(x, p, stats_from_post: bool, precision="bf16x2"):
    """Two linked sub-layers (branch: f = tanh(b)·w), the second fed by the first's post op."""
    from mhc_repro.kernels import cross_layer, fused

    ops = fused.ops(precision)
    n = x.shape[1]
    b, hq, hr, xl = ops.mhc_pre_linked(x, p["phi0"], p["a0"], p["b0"], n)
    f = torch.tanh(b) * p["w0"]
    if stats_from_post:
        x1, stats = cross_layer.mhc_post_res_proj(xl, f, hq, hr, p["phi1"], precision=precision)
    else:
        x1, stats = ops.mhc_post_res_linked(xl, f, hq, hr), None
    b, hq, hr, xl = ops.mhc_pre_linked(x1, p["phi1"], p["a1"], p["b1"], n, stats=stats)
    return ops.mhc_post_res_linked(xl, torch.tanh(b) * p["w1"], hq, hr)


def _params(n, C, device, seed):
    g = torch.Generator().manual_seed(seed)
    M = n * n + 2 * n
    r = lambda *s, scale=1.0: (scale * torch.randn(*s, generator=g)).to(device)  # noqa: E731
    return dict(phi0=r(n * C, M, scale=0.5 / C**0.5), phi1=r(n * C, M, scale=0.5 / C**0.5),
                a0=(0.5 + torch.rand(3, generator=g)).to(device), a1=(0.5 + torch.rand(3, generator=g)).to(device),
                b0=r(M, scale=0.5), b1=r(M, scale=0.5), w0=r(C), w1=r(C))


@pytest.mark.parametrize("N,n,C", [(37, 4, 67), (19, 2, 48), (11, 1, 16)])
def test_linked_pair_fed_by_post_res_proj_matches(cross, device, N, n, C):
    """Same outputs and gradients (x and every parameter of both sub-layers) as the linked pair that
    runs its own projection: fp32 stream, interpreter / GPU kernels."""
    torch.manual_seed(N + n)
    x0 = torch.randn(N, n, C, device=device)
    p0 = _params(n, C, device, seed=N * n + C)
    runs = []
    for fused_stats in (False, True):
        x = x0.clone().requires_grad_()
        p = {k: v.clone().requires_grad_() for k, v in p0.items()}
        y = _two_sublayers(x, p, fused_stats)
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(device)
        grads = torch.autograd.grad((y * w).sum(), [x, *p.values()])
        runs.append([y.detach(), *grads])
    for name, a, b in zip(["y", "x", *p0], *runs):
        assert _rel(a, b) < 2e-4, (name, _rel(a, b))  # tf32 projections summed in another order


def test_post_res_proj_compiles_fullgraph(cross, device):
    from torch._dynamo.backends.debugging import aot_eager

    n, C, N = 4, 32, 20
    x = torch.randn(N, n, C, device=device, requires_grad=True)
    p = {k: v.requires_grad_() for k, v in _params(n, C, device, seed=3).items()}
    eager = _two_sublayers(x, p, True)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, p: _two_sublayers(x, p, True), backend=aot_eager, fullgraph=True)(x, p)
    torch._dynamo.reset()
    torch.testing.assert_close(compiled, eager)
    compiled.sum().backward()
    assert torch.isfinite(x.grad).all() and p["phi1"].grad is not None


def test_needs_link_mode_add(cross, monkeypatch):
    from mhc_repro.kernels import linked

    monkeypatch.setattr(linked, "LINK_MODE", "gather")
    with pytest.raises(ValueError, match="needs linked LINK_MODE 'add', not 'gather'"):
        cross.mhc_post_res_proj(torch.zeros(3, 2, 8), torch.zeros(3, 8), torch.zeros(3, 2), torch.zeros(3, 2, 2),
                                torch.zeros(16, 8))


SWEPT_TILES = [(32, 64, 4, 0, 1), (16, 64, 4, 0, 1), (32, 32, 2, 0, 1), (64, 64, 8, 0, 1), (64, 64, 4, 1, 2),
               (64, 64, 8, 1, 2), (64, 128, 8, 1, 2), (32, 64, 4, 1, 2), (64, 64, 4, 2, 2), (128, 64, 8, 1, 2),
               (64, 64, 8, 1, 3), (32, 128, 4, 1, 3), (64, 32, 4, 1, 3), (64, 64, 4, 4, 2)]


@pytest.mark.parametrize("tiles", SWEPT_TILES)
def test_every_swept_tile_matches(cross, launch, device, monkeypatch, tiles):
    """Each candidate the benchmark's sweep may pick (kernel_bench.SWEEP["_POST_RES_PROJ"]) is correct."""
    monkeypatch.setattr(launch, "_POST_RES_PROJ", tiles)
    N, n, C = 41, 4, 80
    x, f, hp, hr, phi = _inputs(N, n, C, torch.bfloat16, device, seed=5)
    out, m, ss = cross.launch_post_res_proj(x, f, hp, hr, phi, "bf16x2")
    ref_out = mhc_ops.mhc_post_res(x.double(), f.double(), hp.double(), hr.double())
    v = out.double().reshape(N, n * C)
    assert _rel(out, ref_out) < 4e-3 and _rel(m, v @ phi.double()) < 1e-5 and _rel(ss, v.square().sum(1)) < 1e-6


def test_swept_tiles_are_the_benchmarks():
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
    import kernel_bench

    assert kernel_bench.SWEEP["_POST_RES_PROJ"] == SWEPT_TILES
