"""Fused Triton mHC kernels vs the fp64 reference (residual/mhc_ops.py): outputs and all gradients."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mhc_repro.residual import mhc_ops

REF = SimpleNamespace(mhc_coefficients=mhc_ops.mhc_coefficients, mhc_pre=mhc_ops.mhc_pre,
                      mhc_post_res=mhc_ops.mhc_post_res)
NAMES = ["h_pre", "h_post", "h_res", "branch_in", "x_out", "d_x", "d_phi", "d_alpha", "d_bias", "d_f"]


def _inputs(N: int, n: int, C: int, dtype: torch.dtype, device: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    M = n * n + 2 * n
    r = lambda *s, scale=1.0: (scale * torch.randn(*s, generator=g)).to(device)  # noqa: E731
    return dict(
        x=r(N, n, C).to(dtype), f=r(N, C).to(dtype),
        phi=r(n * C, M, scale=0.5 / C**0.5), alpha=(0.5 + torch.rand(3, generator=g)).to(device),
        bias=r(M, scale=0.5),
        # Random cotangents for every output, so every gradient path is exercised.
        w=[r(N, n), r(N, n), r(N, n, n), r(N, C), r(N, n, C)],
    )


def _run(ops, inp, n: int, t_max: int, upcast: bool, eps: float = 1e-6, rms_eps: float = 1e-6,
         shift: bool = False):
    conv = (lambda t: t.double()) if upcast else (lambda t: t)
    leaves = {k: conv(inp[k]).detach().requires_grad_() for k in ("x", "phi", "alpha", "bias", "f")}
    x, f = leaves["x"], leaves["f"]
    N, _, C = x.shape
    h_pre, h_post, h_res = ops.mhc_coefficients(x.reshape(N, n * C), leaves["phi"], leaves["alpha"],
                                                leaves["bias"], n, t_max, eps, rms_eps, shift=shift)
    b = ops.mhc_pre(x, h_pre)
    y = ops.mhc_post_res(x, f * b.to(f.dtype), h_post, h_res)
    outs = [h_pre, h_post, h_res, b, y]
    loss = sum((o.double() * conv(w).double()).sum() for o, w in zip(outs, inp["w"]))
    grads = torch.autograd.grad(loss, [leaves[k] for k in ("x", "phi", "alpha", "bias", "f")])
    return [o.detach() for o in outs] + list(grads)


def _compare(got, ref, tol: float, names=NAMES):
    for name, a, b in zip(names, got, ref):
        assert a.shape == b.shape, f"{name}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        assert torch.isfinite(a).all(), f"{name}: non-finite values"
        err = ((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm().clamp_min(1e-30)).item()
        assert err < tol, f"{name}: relative error {err:.3e} >= {tol:.0e}"


# (N tokens, n streams, C): odd C, n = 1, 2, 4, 8, token counts not multiples of any block size; C = 301
# is wider than the stream kernels' channel block (256: several C blocks / chunks, a clipped last one).
SHAPES = [(37, 4, 67), (5, 1, 33), (19, 2, 48), (11, 8, 24), (45, 3, 16), (7, 3, 301)]


@pytest.mark.parametrize("N,n,C", SHAPES)
def test_fp32_matches_fp64_reference(fused, device, N, n, C):
    torch.manual_seed(N * 100 + n)
    inp = _inputs(N, n, C, torch.float32, device, seed=int(torch.randint(0, 2**31, ())))
    got = _run(fused.ops(), inp, n, t_max=20, upcast=False)
    ref = _run(REF, inp, n, t_max=20, upcast=True)
    # CPU interpreter: fp32 products. CUDA: tf32 projections (≈3e-4 per product).
    _compare(got, ref, tol=2e-5 if device == "cpu" else 5e-3)


@pytest.mark.parametrize("N,n,C", [(33, 4, 80), (9, 8, 40)])
def test_bf16_stream_matches_reference(fused, device, N, n, C):
    torch.manual_seed(7 + n)
    inp = _inputs(N, n, C, torch.bfloat16, device, seed=int(torch.randint(0, 2**31, ())))
    got = _run(fused.ops(), inp, n, t_max=20, upcast=False)
    ref = _run(REF, inp, n, t_max=20, upcast=False)  # same bf16 inputs and output roundings
    assert got[4].dtype == torch.bfloat16 and got[5].dtype == torch.bfloat16
    _compare(got, ref, tol=2e-2)
    # The coefficients use bf16 hi/lo splits of φ on a bf16 stream: ~16-bit products, far tighter
    # than tf32 — check them against fp64 on the same (bf16-valued) inputs.
    ref64 = _run(REF, inp, n, t_max=20, upcast=True)
    _compare(got[:3], ref64[:3], tol=1e-4)


def test_sinkhorn_rows_exact_and_short_tmax(fused, device):
    N, n, C = 21, 4, 32
    inp = _inputs(N, n, C, torch.float32, device, seed=3)
    inp["alpha"] = inp["alpha"] * 8  # wide logits: far from the uniform matrix
    got = _run(fused.ops(), inp, n, t_max=3, upcast=False)
    ref = _run(REF, inp, n, t_max=3, upcast=True)
    _compare(got, ref, tol=2e-5 if device == "cpu" else 5e-3)
    rows = got[2].sum(-1)
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-4), "H_res rows must sum to 1"


@pytest.mark.parametrize("N,n,C", [(21, 4, 40), (13, 3, 24)])
def test_non_default_eps_match_fp64_reference(fused, device, N, n, C):
    """eps (H_pre's offset and every Sinkhorn denominator) and rms_eps (the projection's 1/r) large and
    distinct: at the defaults (1e-6 both) dropping either, or swapping the two, moves the results by
    less than the tolerance. n = 4 too: there no padded Sinkhorn column turns a missing eps into a NaN."""
    inp = _inputs(N, n, C, torch.float32, device, seed=13 * N + n)
    kw = dict(eps=0.05, rms_eps=0.5)
    got = _run(fused.ops(), inp, n, t_max=20, upcast=False, **kw)
    ref = _run(REF, inp, n, t_max=20, upcast=True, **kw)
    _compare(got, ref, tol=2e-5 if device == "cpu" else 5e-3)


def test_backward_is_deterministic(fused, device):
    inp = _inputs(29, 4, 40, torch.float32, device, seed=11)
    a = _run(fused.ops(), inp, 4, t_max=20, upcast=False)
    b = _run(fused.ops(), inp, 4, t_max=20, upcast=False)
    for name, u, v in zip(NAMES, a, b):
        assert torch.equal(u, v), f"{name} differs between two identical runs"


def test_bad_shapes_raise(fused):
    x = torch.zeros(4, 2, 8)
    with pytest.raises(ValueError, match="phi shape"):
        fused.mhc_coefficients(x.reshape(4, 16), torch.zeros(16, 7), torch.zeros(3), torch.zeros(8), 2)
    with pytest.raises(ValueError, match="t_max"):
        fused.mhc_coefficients(x.reshape(4, 16), torch.zeros(16, 8), torch.zeros(3), torch.zeros(8), 2, 0)
    with pytest.raises(ValueError, match="mhc_pre shapes"):
        fused.mhc_pre(x, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="mhc_post_res shapes"):
        fused.mhc_post_res(x, torch.zeros(4, 9), torch.zeros(4, 2), torch.zeros(4, 2, 2))
