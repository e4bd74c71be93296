"""The descriptor-only dx pass (``dx_ws.proj_dx_ws``, for Hopper warp specialization) against the
passes it could replace: the TMA "add" pass (same products, same order: same dx bits on the
interpreter) and the pointer "gather" pass (H_resᵀ g formed in the pass; another order of the adds,
so equal within the bf16 output's rounding). dφ against a float64 xᵀ·dm within what dm's bf16 parts allow.
Odd token counts (the descriptor clips the last tile), several splits, n = 1..4."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.test_dx_tma import TILES, _case

WS_TILES = (16, 16, 32, 2, 4)  # (BN, BK, tokens per split, loop stages, warps)


def _parts(launch, a, precision):
    M = a["dm"].shape[1]
    p, _, lo_off, _, lo = launch._phi_parts(a["phi"], a["x"], precision, launch._p2(M, 16))
    return p, lo_off, lo


def _dphi_ok(part, a, precision) -> bool:
    """dφ within what dm's bf16 parts allow of the exact xᵀ·dm (test_dx_tma's bound: the interpreter
    truncates to bf16, hence 2^-7 for one part)."""
    exact = a["x"].double().t() @ a["dm"].double()
    scale = a["x"].double().abs().t() @ a["dm"].double().abs()
    tol = 2.0**-15 if precision == "bf16x2" else 2.0**-7
    return bool(((part.sum(0).double() - exact).abs() <= tol * scale).all())


@pytest.mark.parametrize("gather", [False, True])
@pytest.mark.parametrize("precision", ["bf16x2", "bf16"])
@pytest.mark.parametrize("N,n,C", [(37, 4, 48), (70, 2, 32), (5, 1, 16), (50, 3, 16)])
def test_ws_pass_equals_the_passes_it_replaces(launch, monkeypatch, device, N, n, C, precision, gather):
    from mhc_repro.kernels import dx_ws

    a = _case(N, n, C, device, seed=N * n + C + gather)
    link = (a["g"], a["h_res"], a["h_pre"], a["d_in"])
    monkeypatch.setattr(launch, "_PROJ_BWD_GEMM", TILES)
    monkeypatch.setattr(launch, "_PROJ_BWD_TMA", None if gather else TILES)
    ref, _ = launch.launch_proj_bwd(a["x"], a["phi"], a["dm"], a["c"], precision, link=link,
                                    link_mode="gather" if gather else "add")
    p, lo_off, lo = _parts(launch, a, precision)
    dx = torch.empty_like(a["x"])
    part = dx_ws.launch_dx_ws(a["x"], p, lo_off, lo, a["dm"], a["c"], dx, link, gather, tiles=WS_TILES)
    assert part.shape[0] == -(-N // 32)
    if device == "cpu" and not gather:
        assert torch.equal(dx, ref)
    else:
        torch.testing.assert_close(dx.float(), ref.float(), rtol=1e-2, atol=2e-2)
    assert _dphi_ok(part, a, precision)


def test_ws_pass_rejects_what_it_cannot_tile(launch, device):
    from mhc_repro.kernels import dx_ws

    a = _case(8, 4, 24, device, seed=1)
    p, lo_off, lo = _parts(launch, a, "bf16x2")
    with pytest.raises(ValueError, match="C=24 % BK=16"):
        dx_ws.launch_dx_ws(a["x"], p, lo_off, lo, a["dm"], a["c"], torch.empty_like(a["x"]),
                           (a["g"], a["h_res"], a["h_pre"], a["d_in"]), True, tiles=WS_TILES)
