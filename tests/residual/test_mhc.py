import pytest
import torch

from mhc_repro.residual import ResidualConfig, build_residual, capture_h_res, expand_streams
from mhc_repro.residual.mhc import ManifoldHyperConnection

C = 16


def _mhc(layer: int = 1, **kw) -> ManifoldHyperConnection:
    return build_residual(ResidualConfig(kind="mhc", **kw), layer_index=layer, d_model=C, norm_eps=1e-6)


def _coeffs(m, x):
    return m.coefficients(x.reshape(-1, m.n * C))


def test_coefficient_ranges_and_doubly_stochastic():
    torch.manual_seed(0)
    m = _mhc(phi_init="normal", phi_init_std=1.0, alpha_init=0.3)  # logits of O(1)
    x = torch.randn(2, 8, 4, C)
    # with the reference eps = 1e-6 in the denominators a row sums to s / (s + eps) ~ 1 - 1e-6
    assert (_coeffs(m, x)[2].sum(-1) - 1).abs().max() < 3e-6
    m.cfg.sinkhorn_eps = 0.0  # without it, rows are exact to fp32 rounding
    h_pre, h_post, h_res = _coeffs(m, x)
    assert h_pre.dtype == h_post.dtype == h_res.dtype == torch.float32
    assert ((h_pre > 0) & (h_pre < 1)).all() and ((h_post > 0) & (h_post < 2)).all()
    assert (h_res.sum(-1) - 1).abs().max() < 1e-6
    assert (h_res.sum(-2) - 1).abs().max() < 5e-2  # 20 iterations: columns only approximately
    assert h_pre.std() > 0.05 and h_res.std() > 0.05  # the test is not vacuous: coefficients vary


def test_rows_are_the_exact_side_and_applied_as_rows():
    """Transpose trap: x_out[i] = sum_j H[i, j] x[j] with H's rows the exact Sinkhorn side."""
    torch.manual_seed(0)
    m = _mhc(sinkhorn_iters=1, sinkhorn_eps=0.0, phi_init="normal", phi_init_std=1.0, alpha_init=0.3)
    x = torch.randn(1, 6, 4, C)
    with capture_h_res(m):
        out = m(x, lambda h: torch.zeros_like(h))  # F = 0 isolates H_res
    h = m.last_h_res
    assert h.shape == (1, 6, 4, 4) and h.dtype == torch.float32
    row_err, col_err = (h.sum(-1) - 1).abs().max(), (h.sum(-2) - 1).abs().max()
    assert row_err < 1e-6 and col_err > 1e-3  # one iteration: rows exact, columns visibly not
    torch.testing.assert_close(out, torch.einsum("btij,btjc->btic", h, x))
    assert not torch.allclose(out, torch.einsum("btji,btjc->btic", h, x), atol=1e-3)


def test_n1_zero_init_is_prenorm(make_branch):
    """n = 1, phi = 0, b = 0: H_pre = 1/2 + eps, H_post = 1, H_res = 1 - O(eps) -> x + F(x) (F is norm-led)."""
    from mhc_repro.residual.prenorm import PreNormResidual

    m = build_residual(ResidualConfig(kind="mhc", n=1, phi_init="zeros", bias_init="zeros"), 0, C, 1e-6)
    f = make_branch(C)
    x = torch.randn(3, 5, 1, C, dtype=torch.float64)
    torch.testing.assert_close(m(x, f), PreNormResidual()(x, f), rtol=1e-5, atol=1e-5)


def test_hc_bias_init_starts_hc_like():
    m = _mhc(phi_init="zeros", layer=6)  # 6 mod 4 = 2
    h_pre, h_post, h_res = _coeffs(m, torch.randn(1, 3, 4, C))
    assert h_pre[0].argmax() == 2 and h_pre[0, 2] > 0.9 and (h_pre[0, [0, 1, 3]] < 0.1).all()
    torch.testing.assert_close(h_post, torch.ones_like(h_post))
    assert (h_res.diagonal(dim1=-2, dim2=-1) > 0.8).all()


@pytest.mark.parametrize("switches", [dict(use_h_pre=False), dict(use_h_post=False), dict(use_h_res=False),
                                      dict(use_h_pre=False, use_h_post=False)])
def test_ablation_switches_give_constants(switches):
    torch.manual_seed(0)
    m = _mhc(phi_init_std=1.0, **switches)
    h_pre, h_post, h_res = _coeffs(m, torch.randn(2, 3, 4, C))
    if not switches.get("use_h_pre", True):
        torch.testing.assert_close(h_pre, torch.full_like(h_pre, 0.25))
    else:
        assert h_pre.std() > 1e-3
    if not switches.get("use_h_post", True):
        torch.testing.assert_close(h_post, torch.ones_like(h_post))
    if not switches.get("use_h_res", True):
        torch.testing.assert_close(h_res, torch.eye(4).expand_as(h_res))
    x = torch.randn(2, 3, 4, C, requires_grad=True)
    m(x, lambda h: 2 * h).sum().backward()  # still differentiable end to end
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_bf16_stream_fp32_coefficients():
    torch.manual_seed(0)
    m = _mhc()
    lin = torch.nn.Linear(C, C).to(torch.bfloat16)
    x = expand_streams(torch.randn(2, 4, C), 4).to(torch.bfloat16).requires_grad_()
    with capture_h_res(m):
        out = m(x, lin)
    assert out.dtype == torch.bfloat16 and m.last_h_res.dtype == torch.float32
    assert m.phi.dtype == torch.float32
    out.float().pow(2).sum().backward()
    assert x.grad.dtype == torch.bfloat16 and m.phi.grad.dtype == torch.float32
    assert m.phi.grad.abs().sum() > 0 and m.alpha.grad.abs().sum() > 0 and m.bias.grad.abs().sum() > 0
    # matches an fp32 run of the same module to bf16 precision
    ref = m(x.detach().float(), lambda h: lin.float()(h))
    torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=3e-2)


def test_default_init_breaks_stream_symmetry():
    """Replicated streams must not stay identical (see ResidualConfig.bias_init)."""
    torch.manual_seed(0)
    m = _mhc()
    x = expand_streams(torch.randn(2, 5, C), 4)
    out = m(x, lambda h: torch.tanh(h))
    assert (out - out[..., :1, :]).abs().max() > 1e-4
    # and with phi = 0, b = 0 they DO stay identical: the degenerate case the default avoids
    m0 = _mhc(phi_init="zeros", bias_init="zeros")
    out0 = m0(x, lambda h: torch.tanh(h))
    torch.testing.assert_close(out0, out0[..., :1, :].expand_as(out0))


def test_no_decay_parameters():
    m = _mhc()
    names = {id(p) for p in m.no_decay_parameters()}
    assert id(m.alpha) in names and id(m.bias) in names and id(m.phi) not in names


@pytest.mark.filterwarnings("ignore:overflow encountered in exp", "ignore:invalid value encountered in divide")
@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("sublayer_ops", ["three", "linked"])
def test_sinkhorn_shift_reaches_the_ops(backend, sublayer_ops, request):
    """residual.sinkhorn_shift goes to whichever op path the module calls: H_res logits of 100 (the
    "hc" bias init at bias_logit = 100) overflow fp32's exp, NaN unless the shift is applied."""
    if backend == "triton":
        request.getfixturevalue("triton_cpu")
    x = torch.randn(2, 3, 4, C, generator=torch.Generator().manual_seed(0))
    for shift in (False, True):
        m = _mhc(bias_logit=100.0, sinkhorn_shift=shift, backend=backend, sublayer_ops=sublayer_ops)
        xs = x.clone().requires_grad_()
        out = m(xs, torch.tanh)
        if not shift:
            assert torch.isnan(out).any()  # the literal exp: inf / inf
            continue
        out.square().sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(xs.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in m.parameters())
