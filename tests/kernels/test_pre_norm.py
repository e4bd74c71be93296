"""The branch's RMSNorm fused into the linked pre op (norm_kernels, ``mhc_pre_linked(norm_weight=)``)
against the reference's ``mhc_pre_linked`` with the same norm, in float64: outputs and every gradient,
the norm weight's included. Odd C (padded rows), n = 1..8, token counts that leave the persistent
backward programs uneven."""

from __future__ import annotations

import functools

import pytest
import torch

from mhc_repro.residual import mhc_ops

from .test_fused_parity import _compare, _inputs

NAMES = ["h_post", "h_res", "branch_in", "x_out", "d_x", "d_phi", "d_alpha", "d_bias", "d_f", "d_norm_w"]


def _run_norm(ops, inp, n: int, upcast: bool, norm_eps: float = 1e-6, norm: bool = True, eps: float = 1e-6,
              rms_eps: float = 1e-6):
    """Outputs and gradients (the norm weight's last) of the linked pair with (or, norm False, without)
    the fused branch norm."""
    conv = (lambda t: t.double()) if upcast else (lambda t: t)
    keys = ("x", "phi", "alpha", "bias", "f") + (("norm_w",) if norm else ())
    leaves = {k: conv(inp[k]).detach().requires_grad_() for k in keys}
    x, f = leaves["x"], leaves["f"]
    b, h_post, h_res, x_link = ops.mhc_pre_linked(x, leaves["phi"], leaves["alpha"], leaves["bias"], n, 20, eps,
                                                  rms_eps, norm_weight=leaves.get("norm_w"), norm_eps=norm_eps)
    y = ops.mhc_post_res_linked(x_link, f * b.to(f.dtype), h_post, h_res)
    outs = [h_post, h_res, b, y]
    loss = sum((o.double() * conv(w).double()).sum() for o, w in zip(outs, inp["w"][1:]))
    grads = torch.autograd.grad(loss, [leaves[k] for k in keys])
    return [o.detach() for o in outs] + list(grads)


def _norm_inputs(N, n, C, dtype, device, seed):
    inp = _inputs(N, n, C, dtype, device, seed)
    g = torch.Generator().manual_seed(seed + 1)
    inp["norm_w"] = (1.0 + 0.3 * torch.randn(C, generator=g)).to(device=device, dtype=dtype)
    return inp


@pytest.mark.parametrize("N,n,C", [(37, 4, 67), (5, 1, 33), (19, 2, 48), (11, 8, 24), (45, 3, 16)])
def test_pre_norm_matches_fp64_reference(fused, device, N, n, C):
    inp = _norm_inputs(N, n, C, torch.float32, device, seed=7 * N + C)
    got = _run_norm(fused.ops(), inp, n, upcast=False)
    ref = _run_norm(mhc_ops, inp, n, upcast=True)
    _compare(got, ref, names=NAMES, tol=2e-5 if device == "cpu" else 5e-3)


@pytest.mark.parametrize("N,n,C", [(37, 4, 48), (19, 2, 32)])
def test_pre_norm_bf16_stream(fused, launch, device, monkeypatch, N, n, C):
    """bf16 stream and weight, through the TMA dx pass where it runs (C % BK == 0): within bf16
    rounding of the same computation in the reference at the same dtypes."""
    monkeypatch.setattr(launch, "_PROJ_BWD_GEMM", (16, 16, 32, 2, 4))
    monkeypatch.setattr(launch, "_PROJ_BWD_TMA", (16, 16, 32, 2, 4))
    inp = _norm_inputs(N, n, C, torch.bfloat16, device, seed=N + n)
    got = _run_norm(fused.ops(), inp, n, upcast=False)
    ref = _run_norm(mhc_ops, inp, n, upcast=False)
    _compare(got, ref, names=NAMES, tol=2e-2)


@pytest.mark.parametrize("norm", [True, False])
def test_linked_non_default_eps_match_fp64_reference(fused, device, norm):
    """The linked pair hands eps, rms_eps and norm_eps on to its kernels: large distinct values (at the
    defaults, 1e-6 each, a dropped or swapped eps moves the results by less than the tolerance)."""
    inp = _norm_inputs(21, 4, 40, torch.float32, device, seed=17)
    kw = dict(norm=norm, eps=0.05, rms_eps=0.5, norm_eps=2.0)
    names = NAMES if norm else NAMES[:-1]
    got = _run_norm(fused.ops(), inp, 4, upcast=False, **kw)
    ref = _run_norm(mhc_ops, inp, 4, upcast=True, **kw)
    _compare(got, ref, names=names, tol=2e-5 if device == "cpu" else 5e-3)


def test_pre_norm_equals_norm_after_pre_in_fp64():
    """The reference's fused form is RMSNorm(pre) · w: the same as the branch normalizing pre's
    output itself when nothing is rounded in between (float64)."""
    inp = _norm_inputs(13, 4, 40, torch.float64, "cpu", seed=5)
    x, w = inp["x"], inp["norm_w"]
    b, *_ = mhc_ops.mhc_pre_linked(x, inp["phi"], inp["alpha"], inp["bias"], 4, 20, norm_weight=w, norm_eps=1e-6)
    plain, *_ = mhc_ops.mhc_pre_linked(x, inp["phi"], inp["alpha"], inp["bias"], 4, 20)
    torch.testing.assert_close(b, torch.nn.functional.rms_norm(plain, (40,), w, 1e-6))


def test_pre_norm_rejects_a_wrong_weight_shape(fused):
    inp = _norm_inputs(3, 2, 16, torch.float32, "cpu", seed=1)
    with pytest.raises(ValueError, match=r"norm_weight shape \(15,\) is invalid; expected \[C=16\]"):
        fused.ops().mhc_pre_linked(inp["x"], inp["phi"], inp["alpha"], inp["bias"], 2, 20,
                                   norm_weight=torch.ones(15))


def test_pre_norm_compiles_without_graph_breaks(fused, device):
    """The fused-norm pair under torch.compile(fullgraph=True) gives eager's values and gradients."""
    ops = fused.ops()

    def sublayer(x, phi, alpha, bias, f_w, norm_w):
        b, hq, hr, xl = ops.mhc_pre_linked(x, phi, alpha, bias, 4, 20, norm_weight=norm_w)
        return ops.mhc_post_res_linked(xl, torch.tanh(b * f_w), hq, hr)

    def leaves(seed):
        inp = _norm_inputs(13, 4, 24, torch.float32, device, seed=seed)
        return [inp[k].detach().clone().requires_grad_() for k in ("x", "phi", "alpha", "bias", "f", "norm_w")]

    a, b = leaves(0), leaves(0)
    a[4], b[4] = a[4][0].detach().requires_grad_(), b[4][0].detach().requires_grad_()  # f_w: [C]
    fn = torch.compile(sublayer, backend="aot_eager" if device == "cpu" else "inductor", fullgraph=True)
    ya, yb = sublayer(*a), fn(*b)
    w = torch.randn_like(ya)
    ga = torch.autograd.grad((ya * w).sum(), a)
    gb = torch.autograd.grad((yb * w).sum(), b)
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(v, u, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("op", ["pre_norm", "pre_norm_bwd"])
def test_pre_norm_opcheck(fused, device, op):
    inp = _norm_inputs(5, 2, 16, torch.float32, device, seed=2)
    x, w = inp["x"], inp["norm_w"]
    h_pre = torch.rand(5, 2, device=device) + 0.1
    args = {"pre_norm": (x, h_pre, w, 1e-6),
            "pre_norm_bwd": (x, h_pre, w, torch.randn(5, 16, device=device), 1e-6)}[op]
    torch.library.opcheck(getattr(torch.ops.mhc_repro, op).default, args,
                          test_utils=("test_schema", "test_faketensor"))


@functools.cache
def _default_tiles_run(fused, device: str):
    """(inputs, results) of the fused pair at the default tiles: computed once per process for the
    three tile cases below (called before they patch anything; the tests only read them)."""
    inp = _norm_inputs(23, 4, 40, torch.float32, device, seed=9)
    return inp, _run_norm(fused.ops(), inp, 4, upcast=False)


@pytest.mark.parametrize("tiles", [(1, 4), (2, 8), (4, 4)])
def test_pre_norm_tiles_give_the_same_results(fused, launch, device, monkeypatch, tiles):
    """launch._PRE_NORM (what the sweep tries): several tokens per program step, other warp counts."""
    inp, ref = _default_tiles_run(fused, device)
    monkeypatch.setattr(launch, "_PRE_NORM", tiles)
    got = _run_norm(fused.ops(), inp, 4, upcast=False)
    _compare(got, ref, names=NAMES, tol=1e-6 if device == "cpu" else 1e-4)


def test_pre_norm_empty_batch(fused, device):
    """No tokens: empty outputs and zero gradients (the backward's persistent grid has no programs)."""
    inp = _norm_inputs(0, 2, 16, torch.float32, device, seed=3)
    got = _run_norm(fused.ops(), inp, 2, upcast=False)
    assert got[2].shape == (0, 16) and torch.equal(got[-1], torch.zeros_like(got[-1]))


@pytest.mark.parametrize("bwd", [(1, 4, 2, 0, 0), (2, 4, 4, 1, 0), (4, 8, 1, 1, 0), (2, 4, 3, 0, 0), (1, 4, 2, 2, 0),
                                 (2, 4, 1, 2, 0), (1, 4, 2, 0, 2), (2, 4, 1, 0, 3)])
def test_pre_norm_backward_tiles_and_prefetch(fused, launch, device, monkeypatch, bwd):
    """launch._PRE_NORM_BWD (BT, warps, programs per SM: token ranges of several steps, uneven last
    ones) with PRE_NORM_BWD_PREFETCH 0 / 1 / 2 steps ahead, or PRE_NORM_BWD_STAGES (Triton's loop
    pipelining): the float64 reference's values and gradients."""
    *tiles, prefetch, stages = bwd
    monkeypatch.setattr(launch, "_PRE_NORM_BWD", tuple(tiles))
    monkeypatch.setattr(launch, "PRE_NORM_BWD_PREFETCH", prefetch)
    monkeypatch.setattr(launch, "PRE_NORM_BWD_STAGES", stages)
    monkeypatch.setattr(launch, "_n_sm", lambda dev: 2)  # few programs: each loops over many steps
    inp = _norm_inputs(41, 4, 40, torch.float32, device, seed=11)
    got = _run_norm(fused.ops(), inp, 4, upcast=False)
    ref = _run_norm(mhc_ops, inp, 4, upcast=True)
    _compare(got, ref, names=NAMES, tol=2e-5 if device == "cpu" else 5e-3)


@pytest.mark.parametrize("smem", [None, 1024])
def test_pre_norm_backward_default_stages_and_the_shared_memory_fallback(fused, launch, device, monkeypatch, smem):
    """The default backward (pipelined stages at its own tile) and, with a shared-memory budget too small
    for the stages' rows (launch._NORM_BWD_SMEM), the PREFETCH path it falls back to: the float64
    reference's values and gradients either way."""
    assert launch.PRE_NORM_BWD_STAGES > 0 and launch._PRE_NORM_BWD is None
    if smem is not None:
        monkeypatch.setattr(launch, "_NORM_BWD_SMEM", smem)
    monkeypatch.setattr(launch, "_n_sm", lambda dev: 2)
    inp = _norm_inputs(37, 4, 72, torch.float32, device, seed=12)
    got = _run_norm(fused.ops(), inp, 4, upcast=False)
    ref = _run_norm(mhc_ops, inp, 4, upcast=True)
    _compare(got, ref, names=NAMES, tol=2e-5 if device == "cpu" else 5e-3)


def test_pre_norm_backward_rejects_a_tile_that_is_not_a_power_of_two(fused, launch, monkeypatch):
    monkeypatch.setattr(launch, "_PRE_NORM_BWD", (3, 4, 2))
    inp = _norm_inputs(5, 2, 16, torch.float32, "cpu", seed=4)
    with pytest.raises(ValueError, match=r"_PRE_NORM_BWD \(3, 4, 2\) is invalid; BT must be a power of two"):
        launch.launch_pre_norm_bwd(inp["x"], torch.rand(5, 2), inp["norm_w"], torch.randn(5, 16), 1e-6)
