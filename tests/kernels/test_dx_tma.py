"""The TMA dx pass (``dx_kernels.proj_dx_tma``) against the pointer dx pass it can replace.

Both compute dx = dm·φᵀ + c·x (+ g + h_pre ⊗ d_in for the linked "add" pair) with the same products
in the same order, so on the interpreter they agree exactly; on the GPU within MMA rounding. Shapes
with token counts that are not multiples of the tile (the descriptor clips the last tile at N) and
several token splits (a tile must never write into the next split).
"""

from __future__ import annotations

import pytest
import torch

TILES = (16, 16, 32, 2, 4)  # (BN, BK, tokens per program, stages, warps): 2-3 splits at these N


def _case(N, n, C, device, seed):
    g = torch.Generator().manual_seed(seed)
    M = n * n + 2 * n
    bf = dict(dtype=torch.bfloat16)
    t = dict(x=torch.randn(N, n * C, generator=g, **bf), phi=0.1 * torch.randn(n * C, M, generator=g),
             dm=torch.randn(N, M, generator=g), c=torch.randn(N, generator=g),
             g=torch.randn(N, n, C, generator=g, **bf), h_res=torch.rand(N, n, n, generator=g),
             h_pre=torch.rand(N, n, generator=g), d_in=torch.randn(N, C, generator=g, **bf))
    return {k: v.to(device) for k, v in t.items()}


def _dx(launch, a, precision, linked, out=None):
    link = (a["g"], a["h_res"], a["h_pre"], a["d_in"]) if linked else None
    dx, dphi = launch.launch_proj_bwd(a["x"], a["phi"], a["dm"], a["c"], precision, link=link,
                                      link_mode="add", out=out)
    return dx.clone(), dphi


@pytest.fixture
def spy(launch, monkeypatch):
    calls = []
    real = launch._launch_dx_tma
    monkeypatch.setattr(launch, "_launch_dx_tma", lambda *a, **kw: (calls.append(1), real(*a, **kw))[1])
    monkeypatch.setattr(launch, "_PROJ_BWD_GEMM", TILES)
    return calls


# CPU (tests/conftest.py): ACC with and without the linked terms, the shapes and precisions in turn
@pytest.mark.cpu_cover(cover=[("linked", "acc")])
@pytest.mark.parametrize("acc", [False, True])
@pytest.mark.parametrize("precision", ["bf16x2", "bf16"])
@pytest.mark.parametrize("linked", [False, True])
@pytest.mark.parametrize("N,n,C", [(37, 4, 48), (70, 2, 32), (5, 1, 16)])
def test_tma_dx_equals_pointer_dx(launch, monkeypatch, spy, device, N, n, C, precision, linked, acc):
    """Bit-identical on the interpreter with the pointer kernel's order of operations; with ACC (the
    MMAs accumulate into the elementwise terms) equal within the bf16 output's rounding."""
    a = _case(N, n, C, device, seed=N * n + C)
    monkeypatch.setattr(launch, "PROJ_DX_TMA_DPHI", 0)  # dφ by the GEMM on both sides
    monkeypatch.setattr(launch, "_PROJ_BWD_TMA", None)
    ref = _dx(launch, a, precision, linked)
    monkeypatch.setattr(launch, "_PROJ_BWD_TMA", TILES)
    monkeypatch.setattr(launch, "PROJ_DX_TMA_ACC", acc)
    got = _dx(launch, a, precision, linked)
    assert len(spy) == 1, "the TMA dx pass did not run"
    if device == "cpu" and not acc:
        assert torch.equal(got[0], ref[0])
    else:
        torch.testing.assert_close(got[0].float(), ref[0].float(), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(got[1], ref[1])  # dφ: the same GEMM either way


def test_tma_dx_in_place_over_g(launch, monkeypatch, spy, device):
    """The linked pair writes dx over g (H_resᵀ g): every tile is read before it is overwritten."""
    a = _case(45, 4, 32, device, seed=3)
    monkeypatch.setattr(launch, "_PROJ_BWD_TMA", TILES)
    ref = _dx(launch, a, "bf16x2", True)
    out = a["g"].clone()
    a["g"] = out
    got = _dx(launch, a, "bf16x2", True, out=out.view(45, -1))
    assert len(spy) == 2
    assert torch.equal(got[0], ref[0]) if device == "cpu" else torch.allclose(got[0].float(), ref[0].float(),
                                                                              rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("N,n,C,dtype", [(21, 4, 40, torch.bfloat16), (21, 2, 32, torch.float32)])
def test_pointer_kernel_where_tma_cannot(launch, monkeypatch, spy, device, N, n, C, dtype):
    """C % BK != 0 (a K tile would span two streams) or an fp32 stream: the pointer kernel runs."""
    a = _case(N, n, C, device, seed=7)
    a["x"], a["g"], a["d_in"] = a["x"].to(dtype), a["g"].to(dtype), a["d_in"].to(dtype)
    monkeypatch.setattr(launch, "_PROJ_BWD_TMA", (16, 32, 32, 2, 4))
    got = _dx(launch, a, "bf16x2", True)
    monkeypatch.setattr(launch, "_PROJ_BWD_TMA", None)
    ref = _dx(launch, a, "bf16x2", True)
    assert spy == []
    assert torch.equal(got[0], ref[0])


@pytest.mark.cpu_cover(cover=[("linked", "loop_stages")])  # CPU: the shapes in turn (tests/conftest.py)
@pytest.mark.parametrize("loop_stages", [2, 3])
@pytest.mark.parametrize("linked", [False, True])
@pytest.mark.parametrize("N,n,C", [(37, 4, 48), (70, 2, 32)])
def test_pipelined_token_loop_gives_the_same_dx(launch, monkeypatch, spy, device, N, n, C, linked, loop_stages):
    """launch.PROJ_DX_TMA_LOOP_STAGES (tl.range multi-buffering the TMA loads) changes only how the
    tiles are fetched: the same products in the same order, so the same bits as the plain loop."""
    a = _case(N, n, C, device, seed=N + C + loop_stages)
    monkeypatch.setattr(launch, "_PROJ_BWD_TMA", TILES)
    monkeypatch.setattr(launch, "PROJ_DX_TMA_LOOP_STAGES", 0)
    ref = _dx(launch, a, "bf16x2", linked)
    monkeypatch.setattr(launch, "PROJ_DX_TMA_LOOP_STAGES", loop_stages)
    got = _dx(launch, a, "bf16x2", linked)
    assert len(spy) == 2, "the TMA dx pass did not run"
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


# CPU (tests/conftest.py): each mode at each precision, the shapes and linked in turn
@pytest.mark.cpu_cover(cover=[("precision", "mode")])
@pytest.mark.parametrize("mode", [1, 2])
@pytest.mark.parametrize("precision", ["bf16x2", "bf16"])
@pytest.mark.parametrize("linked", [False, True])
@pytest.mark.parametrize("N,n,C", [(37, 4, 48), (70, 2, 32), (5, 1, 16)])
def test_dphi_in_the_dx_pass(launch, monkeypatch, spy, device, N, n, C, precision, linked, mode):
    """launch.PROJ_DX_TMA_DPHI: dφ = xᵀ·dm from the pass's own x tiles (per-split partials) instead of
    the dφ GEMM. dx is untouched (same bits); dφ has the GEMM's products (bf16 x, dm's bf16 parts) in
    another summation order: both checked against a float64 xᵀ·dm with the tolerance the parts allow."""
    a = _case(N, n, C, device, seed=N + 2 * C + n)
    monkeypatch.setattr(launch, "_PROJ_BWD_TMA", TILES)
    monkeypatch.setattr(launch, "PROJ_DX_TMA_DPHI", 0)
    ref = _dx(launch, a, precision, linked)
    monkeypatch.setattr(launch, "PROJ_DX_TMA_DPHI", mode)
    monkeypatch.setattr(launch, "_dphi_gemm", lambda *args: pytest.fail("the dφ GEMM ran"))
    got = _dx(launch, a, precision, linked)
    assert len(spy) == 2, "the TMA dx pass did not run"
    assert torch.equal(got[0], ref[0])
    exact = a["x"].double().t() @ a["dm"].double()
    # dm's hi + lo parts / dm rounded once to bf16 (the interpreter truncates, hence 2^-7 not 2^-8)
    tol = 2.0**-15 if precision == "bf16x2" else 2.0**-7
    scale = a["x"].double().abs().t() @ a["dm"].double().abs()
    for dphi in (got[1], ref[1]):
        assert ((dphi.double() - exact).abs() <= tol * scale).all()


@pytest.mark.parametrize("mode", [1, 2])
def test_dphi_partials_cover_every_split(launch, monkeypatch, spy, device, mode):
    """Several token splits with a clipped last tile: every token counts once in dφ (a tile of one
    split must not reach into the next, the clipped tail contributes zeros)."""
    a = _case(83, 4, 32, device, seed=11)  # 3 splits of 32 tokens, the last one 19
    a["dm"] = torch.ones_like(a["dm"])
    a["x"] = torch.ones_like(a["x"])
    monkeypatch.setattr(launch, "_PROJ_BWD_TMA", TILES)
    monkeypatch.setattr(launch, "PROJ_DX_TMA_DPHI", mode)
    _, dphi = _dx(launch, a, "bf16", True)
    assert torch.equal(dphi, torch.full_like(dphi, 83.0))
