"""linked.LINK_MODE "streams" (kernels/dx_streams.py): the linked pair's backward through the dx pass
whose programs own all n streams of a channel chunk, with and without the fused branch norm, against
the reference ops: bf16 streams at the reference's own bf16 rounding, and a float64 reference for the
same bf16 inputs. Odd C (chunks cut by the mask), n = 1, 2, 3, 4, token counts that leave the last
tile and the last split uneven, both projection precisions; fp32 streams fall back to "gather"."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from mhc_repro.residual import mhc_ops

from .test_fused_parity import _compare
from .test_pre_norm import _norm_inputs, _run_norm

NAMES = ["h_post", "h_res", "branch_in", "x_out", "d_x", "d_phi", "d_alpha", "d_bias", "d_f", "d_norm_w"]


def _run(ops, inp, n: int, norm: bool, upcast: bool = False):
    return _run_norm(ops, inp, n, upcast, norm=norm)


_streams_inputs = _norm_inputs


def _streams_ops(launch, monkeypatch, flat: bool) -> SimpleNamespace:
    """The fused ops with LINK_MODE "streams", its dx pass in the given MMA form (launch.DX_STREAMS_FLAT);
    ``.calls`` counts the pass's launches."""
    from mhc_repro.kernels import dx_streams, fused, linked

    monkeypatch.setattr(linked, "LINK_MODE", "streams")
    monkeypatch.setattr(launch, "DX_STREAMS_FLAT", flat)
    monkeypatch.setattr(launch, "_DX_STREAMS", (16, 16, 32, 4))  # several splits and chunks at test sizes
    real, calls = dx_streams.launch_dx_streams, []
    monkeypatch.setattr(dx_streams, "launch_dx_streams", lambda *a, **kw: (calls.append(1), real(*a, **kw))[1])
    return SimpleNamespace(**vars(fused.ops()), calls=calls)  # ops() is shared: not mutated


@pytest.fixture(params=[False, True], ids=["batched", "flat"])
def streams_forms(fused, launch, monkeypatch, request):
    """Both MMA forms of the pass (the parity tests)."""
    return _streams_ops(launch, monkeypatch, request.param)


@pytest.fixture
def streams(fused, launch, monkeypatch):
    """The default (batched) form (the tests of the wiring around it)."""
    return _streams_ops(launch, monkeypatch, False)


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("N,n,C", [(37, 4, 40), (21, 2, 33), (9, 1, 48), (40, 3, 16)])
def test_streams_bf16_matches_the_reference(streams_forms, device, norm, N, n, C):
    """bf16 stream: within bf16 rounding of the reference at the same dtypes, and of float64."""
    inp = _streams_inputs(N, n, C, torch.bfloat16, device, seed=3 * N + C)
    names = NAMES if norm else NAMES[:-1]
    got = _run(streams_forms, inp, n, norm)
    assert len(streams_forms.calls) == 1  # the all-stream pass ran (no fallback)
    _compare(got, _run(mhc_ops, inp, n, norm), names=names, tol=2e-2)
    _compare(got, _run(mhc_ops, inp, n, norm, upcast=True), names=names, tol=2e-2)


@pytest.mark.parametrize("precision", ["bf16x2", "bf16"])
def test_streams_equals_add_mode_within_rounding(streams_forms, device, monkeypatch, precision):
    """The same sub-layer through "streams" and through the default "add" pass: the same gradients up
    to summation order (bf16 outputs: a few bf16 ulps)."""
    from mhc_repro.kernels import launch, linked

    monkeypatch.setattr(launch, "PROJ_PRECISION", precision)
    inp = _streams_inputs(33, 4, 32, torch.bfloat16, device, seed=5)
    got = _run(streams_forms, inp, 4, norm=True)
    monkeypatch.setattr(linked, "LINK_MODE", "add")
    ref = _run(streams_forms, inp, 4, norm=True)
    _compare(got, ref, names=NAMES, tol=1e-2)


def test_streams_falls_back_on_fp32_streams(streams, device):
    """fp32 stream: the "streams" pass does not run (bf16 only); post's raw g goes through "gather"."""
    inp = _streams_inputs(13, 4, 24, torch.float32, device, seed=8)
    got = _run(streams, inp, 4, norm=True)
    assert streams.calls == []
    ref = _run(mhc_ops, inp, 4, norm=True, upcast=True)
    _compare(got, ref, names=NAMES, tol=2e-5 if device == "cpu" else 5e-3)


def test_streams_compiles_without_graph_breaks(streams, device):
    """The pair with LINK_MODE "streams" under torch.compile(fullgraph=True): eager's gradients."""
    def sublayer(x, phi, alpha, bias, f_w, norm_w):
        b, hq, hr, xl = streams.mhc_pre_linked(x, phi, alpha, bias, 4, 20, norm_weight=norm_w)
        return streams.mhc_post_res_linked(xl, torch.tanh(b * f_w), hq, hr)

    def leaves():
        inp = _streams_inputs(13, 4, 32, torch.bfloat16, device, seed=2)
        out = [inp[k].detach().clone().requires_grad_() for k in ("x", "phi", "alpha", "bias", "f", "norm_w")]
        out[4] = out[4][0].detach().requires_grad_()
        return out

    a, b = leaves(), leaves()
    fn = torch.compile(sublayer, backend="aot_eager" if device == "cpu" else "inductor", fullgraph=True)
    ya, yb = sublayer(*a), fn(*b)
    w = torch.randn(ya.shape, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=ya.dtype)
    for u, v in zip(torch.autograd.grad((ya * w).sum(), a), torch.autograd.grad((yb * w).sum(), b)):
        torch.testing.assert_close(v.float(), u.float(), rtol=2e-2, atol=2e-2)


def test_streams_opcheck(streams, device):
    from mhc_repro.kernels import linked  # noqa: F401  (registers the op)

    N, n, C = 6, 2, 16
    inp = _streams_inputs(N, n, C, torch.bfloat16, device, seed=4)
    M = n * n + 2 * n
    f32 = dict(device=device, dtype=torch.float32)
    args = (inp["x"], inp["phi"], inp["alpha"], inp["bias"], torch.rand(N, n, **f32), torch.rand(N, n, n, **f32),
            torch.randn(N, M, **f32), torch.rand(N, **f32) + 1, torch.randn(N, C, device=device, dtype=torch.bfloat16),
            torch.randn(N, n, **f32), torch.randn(N, n, n, **f32), torch.randn_like(inp["x"]), inp["norm_w"],
            n, 20, 1e-6, 1e-6, "bf16x2")
    torch.library.opcheck(torch.ops.mhc_repro.pre_linked_bwd_streams.default, args,
                          test_utils=("test_schema", "test_faketensor"))
