"""The linked sub-layer pair (kernels/linked.py: one stream-gradient buffer) vs the fp64 reference."""

from __future__ import annotations

import pytest
import torch

from mhc_repro.residual import mhc_ops

from .test_fused_parity import NAMES, _compare, _inputs, _run


def _run_linked(ops, inp, n: int, upcast: bool, t_max: int = 20, shift: bool = False):
    """Same sub-layer and cotangents as test_fused_parity._run, through the linked pair."""
    conv = (lambda t: t.double()) if upcast else (lambda t: t)
    leaves = {k: conv(inp[k]).detach().requires_grad_() for k in ("x", "phi", "alpha", "bias", "f")}
    x, f = leaves["x"], leaves["f"]
    b, h_post, h_res, x_link = ops.mhc_pre_linked(x, leaves["phi"], leaves["alpha"], leaves["bias"], n, t_max,
                                                  shift=shift)
    y = ops.mhc_post_res_linked(x_link, f * b.to(f.dtype), h_post, h_res)
    outs = [h_post, h_res, b, y]
    loss = sum((o.double() * conv(w).double()).sum() for o, w in zip(outs, inp["w"][1:]))
    grads = torch.autograd.grad(loss, [leaves[k] for k in ("x", "phi", "alpha", "bias", "f")])
    return [o.detach() for o in outs] + list(grads)


def _no_pre_cotangent(inp):
    out = dict(inp)
    out["w"] = [torch.zeros_like(inp["w"][0])] + inp["w"][1:]  # H_pre is not an output of the pair
    return out


LINKED_NAMES = NAMES[1:]


@pytest.fixture(params=["add", "add-copy", "gather"], autouse=True)
def link_mode(request, monkeypatch):
    """Every test runs with both ways of forming the post_res part of the stream gradient, "add" both
    writing over post_res_bwd's buffer (the default) and into a new one."""
    from mhc_repro.kernels import linked

    monkeypatch.setattr(linked, "LINK_MODE", request.param.removesuffix("-copy"))
    monkeypatch.setattr(linked, "ADD_IN_PLACE", not request.param.endswith("-copy"))
    return request.param


@pytest.mark.cpu_cover  # CPU: every shape, the link modes in turn (tests/conftest.py)
@pytest.mark.parametrize("N,n,C", [(37, 4, 67), (5, 1, 33), (19, 2, 48), (11, 8, 24), (45, 3, 16), (7, 3, 301)])
def test_linked_matches_fp64_reference(fused, device, N, n, C):
    inp = _no_pre_cotangent(_inputs(N, n, C, torch.float32, device, seed=3 * N + n))
    got = _run_linked(fused.ops(), inp, n, upcast=False)
    ref = _run(mhc_ops, inp, n, t_max=20, upcast=True)[1:]  # the three reference ops, H_pre dropped
    for name, a, b in zip(LINKED_NAMES, got, ref):
        assert a.shape == b.shape, name
    _compare(got, ref, names=LINKED_NAMES, tol=2e-5 if device == "cpu" else 5e-3)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")
def test_linked_shift_out_of_range_logits(fused, device):
    """residual.sinkhorn_shift through the pair (both link modes' backward ops): H_res logits outside
    fp32's exp range (test_sinkhorn_shift._out_of_range), against the fp64 reference with the shift."""
    from .test_sinkhorn_shift import _out_of_range

    inp = _no_pre_cotangent(_out_of_range(_inputs(19, 4, 24, torch.float32, device, seed=8), 4))
    got = _run_linked(fused.ops(), inp, 4, upcast=False, shift=True)
    ref = _run(mhc_ops, inp, 4, t_max=20, upcast=True, shift=True)[1:]
    _compare(got, ref, names=LINKED_NAMES, tol=2e-5 if device == "cpu" else 5e-3)


# Tiles for which a K tile lies inside one stream (C % BK == 0: the per-token coefficient path of
# proj_bwd's LINK) at C = 48 and 16, with the dφ reduction fused or as a separate GEMM.
ALIGNED_TILES = {"fused dphi": dict(_PROJ_BWD=(16, 16, 2, False, 4, False), _PROJ_BWD_GEMM=None),
                 "fused dphi, unaligned": dict(_PROJ_BWD=(16, 32, 2, False, 4, False), _PROJ_BWD_GEMM=None),
                 "dphi gemm": dict(_PROJ_BWD_GEMM=(16, 16, 32, 2, 4)),
                 "dphi gemm, unaligned": dict(_PROJ_BWD_GEMM=(16, 32, 32, 2, 4))}
# The TMA dx pass (dx_kernels) runs for a bf16 stream in "add" mode only: its own test below.
TMA_TILES = {"TMA dx pass": dict(_PROJ_BWD_GEMM=(16, 16, 32, 2, 4), _PROJ_BWD_TMA=(16, 16, 32, 2, 4)),
             "TMA dx pass, MMA results summed": dict(_PROJ_BWD_GEMM=(16, 16, 32, 2, 4),
                                                     _PROJ_BWD_TMA=(16, 16, 32, 2, 4), PROJ_DX_TMA_ACC=False)}


def _check_tiles(fused, launch, device, monkeypatch, tiles: dict, dtype) -> None:
    for k, v in tiles.items():
        monkeypatch.setattr(launch, k, v)
    for N, n, C in [(37, 2, 48), (19, 4, 16)]:
        inp = _no_pre_cotangent(_inputs(N, n, C, dtype, device, seed=N + C))
        got = _run_linked(fused.ops(), inp, n, upcast=False)
        if dtype == torch.float32:
            ref = _run(mhc_ops, inp, n, t_max=20, upcast=True)[1:]
            _compare(got, ref, names=LINKED_NAMES, tol=2e-5 if device == "cpu" else 5e-3)
        else:
            ref = _run(mhc_ops, inp, n, t_max=20, upcast=False)[1:]
            _compare(got, ref, names=LINKED_NAMES, tol=2e-2)


# "add-copy" runs the same dx pass as "add" (only its output buffer differs): not repeated here.
# CPU (tests/conftest.py): every pair of tile set, dtype and link mode
@pytest.mark.cpu_cover(cover=[("tiles", "dtype"), ("tiles", "link_mode"), ("dtype", "link_mode")])
@pytest.mark.parametrize("link_mode", ["add", "gather"], indirect=True)
@pytest.mark.parametrize("tiles", list(ALIGNED_TILES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linked_tile_variants(fused, launch, device, monkeypatch, tiles, dtype, link_mode):
    _check_tiles(fused, launch, device, monkeypatch, ALIGNED_TILES[tiles], dtype)


@pytest.mark.parametrize("link_mode", ["add"], indirect=True)
@pytest.mark.parametrize("tiles", list(TMA_TILES))
def test_linked_tma_tile_variants(fused, launch, device, monkeypatch, tiles, link_mode):
    _check_tiles(fused, launch, device, monkeypatch, TMA_TILES[tiles], torch.bfloat16)


def test_linked_reference_pair_equals_three_ops(device):
    inp = _no_pre_cotangent(_inputs(13, 4, 24, torch.float64, device, seed=1))
    got = _run_linked(mhc_ops, inp, 4, upcast=False)
    ref = _run(mhc_ops, inp, 4, t_max=20, upcast=False)[1:]
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)


def test_linked_bf16_stream(fused, device):
    inp = _no_pre_cotangent(_inputs(33, 4, 80, torch.bfloat16, device, seed=9))
    got = _run_linked(fused.ops(), inp, 4, upcast=False)
    ref = _run(mhc_ops, inp, 4, t_max=20, upcast=False)[1:]
    _compare(got, ref, names=LINKED_NAMES, tol=2e-2)


def test_linked_deterministic_and_compiles(fused, device):
    inp = _no_pre_cotangent(_inputs(29, 4, 40, torch.float32, device, seed=4))
    a = _run_linked(fused.ops(), inp, 4, upcast=False)
    b = _run_linked(fused.ops(), inp, 4, upcast=False)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    ops = fused.ops()
    backend = "aot_eager" if device == "cpu" else "inductor"

    def sub(x, phi, alpha, bias, fw):
        b_, hq, hr, xl = ops.mhc_pre_linked(x, phi, alpha, bias, 4)
        return ops.mhc_post_res_linked(xl, torch.tanh(b_ * fw), hq, hr)

    torch._dynamo.reset()
    fn = torch.compile(sub, backend=backend, fullgraph=True)
    g = torch.Generator().manual_seed(0)
    leaves = [torch.randn(13, 4, 24, generator=g), 0.1 * torch.randn(96, 24, generator=g),
              0.5 + torch.rand(3, generator=g), 0.1 * torch.randn(24, generator=g), torch.randn(24, generator=g)]
    la = [t.to(device).requires_grad_() for t in leaves]
    lb = [t.to(device).requires_grad_() for t in leaves]
    ya, yb = sub(*la), fn(*lb)
    w = torch.randn_like(ya)
    for u, v in zip(torch.autograd.grad((ya * w).sum(), la), torch.autograd.grad((yb * w).sum(), lb)):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


def test_linked_bad_shapes(fused):
    x = torch.zeros(4, 2, 8)
    with pytest.raises(ValueError, match="mhc_pre_linked x shape"):
        fused.ops().mhc_pre_linked(x, torch.zeros(16, 8), torch.zeros(3), torch.zeros(8), 3)
    with pytest.raises(ValueError, match="mhc_post_res shapes"):
        fused.ops().mhc_post_res_linked(x, torch.zeros(4, 9), torch.zeros(4, 2), torch.zeros(4, 2, 2))


def test_linked_bad_link_mode(fused, monkeypatch):
    from mhc_repro.kernels import linked

    monkeypatch.setattr(linked, "LINK_MODE", "scatter")
    with pytest.raises(ValueError, match="LINK_MODE 'scatter' is unknown; allowed: gather, add"):
        fused.ops().mhc_pre_linked(torch.zeros(4, 2, 8), torch.zeros(16, 8), torch.zeros(3), torch.zeros(8), 2)


def test_gather_cannot_write_over_g(launch):
    x, g = torch.randn(3, 8), torch.randn(3, 2, 4)
    with pytest.raises(ValueError, match="link_mode='gather' cannot write dx over g"):
        launch.launch_proj_bwd(x, torch.randn(8, 8), torch.randn(3, 8), torch.randn(3), "bf16x2",
                               link=(g, torch.rand(3, 2, 2), torch.rand(3, 2), torch.randn(3, 4)),
                               link_mode="gather", out=g.view(3, 8))


def test_linked_zero_tokens_and_non_contiguous(fused, device):
    ops = fused.ops()
    n, C = 4, 8
    phi = torch.randn(n * C, n * n + 2 * n, device=device, requires_grad=True)
    a = torch.rand(3, device=device, requires_grad=True)
    b = torch.randn(n * n + 2 * n, device=device, requires_grad=True)
    x = torch.randn(0, n, C, device=device, requires_grad=True)
    bi, hq, hr, xl = ops.mhc_pre_linked(x, phi, a, b, n)
    ops.mhc_post_res_linked(xl, bi, hq, hr).sum().backward()
    assert x.grad.shape == x.shape and float(phi.grad.abs().sum()) == 0.0
    xt = torch.randn(6, C, n, device=device).transpose(1, 2).requires_grad_()  # [6, n, C], strided
    xc = xt.detach().contiguous().requires_grad_()
    outs = []
    for v in (xt, xc):
        bi, hq, hr, xl = ops.mhc_pre_linked(v, phi, a, b, n)
        ops.mhc_post_res_linked(xl, bi, hq, hr).pow(2).sum().backward()
        outs.append(v.grad)
    torch.testing.assert_close(outs[0], outs[1])

