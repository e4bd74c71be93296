import pytest
import torch

from mhc_repro.residual import ResidualConfig, StreamCollapse, build_residual, expand_streams
from mhc_repro.residual.prenorm import PreNormResidual

C, L = 16, 6


def _stack_outputs(make_branch, collapse: str, eps: float = 1e-6):
    torch.manual_seed(0)
    # fp32: the stream ops compute in fp32 (mhc_ops casts), and at init every H is exactly 0/1
    h0 = torch.randn(2, 7, C)
    branches = [make_branch(C, seed=l).float() for l in range(L)]
    cfg = ResidualConfig(kind="hc", n=4, collapse=collapse)
    layers = [build_residual(cfg, l, C, eps) for l in range(L)]
    x = expand_streams(h0, 4)
    for layer, f in zip(layers, branches):
        x = layer(x, f)
    hc_out = StreamCollapse(cfg, C)(x)
    y = h0.unsqueeze(-2)
    for f in branches:
        y = PreNormResidual()(y, f)
    return hc_out, y.squeeze(-2), x


def test_hc_at_init_is_exactly_prenorm_mean_collapse(make_branch):
    hc_out, pre_out, x = _stack_outputs(make_branch, "mean")
    assert torch.equal(hc_out, pre_out)  # bit-exact
    assert torch.equal(x, pre_out.unsqueeze(-2).expand_as(x))


def test_hc_at_init_sum_collapse_equals_prenorm_after_final_norm(make_branch):
    hc_out, pre_out, _ = _stack_outputs(make_branch, "sum")
    assert torch.equal(hc_out, 4 * pre_out)
    norm = torch.nn.RMSNorm(C, eps=1e-12)
    torch.testing.assert_close(norm(hc_out), norm(pre_out), rtol=1e-6, atol=1e-6)


def test_hc_init_values_and_no_decay():
    m = build_residual(ResidualConfig(kind="hc", n=4), 5, C, 1e-6)
    h_pre, h_post, h_res = m.coefficients(torch.randn(3, 4, C))
    torch.testing.assert_close(h_pre, torch.tensor([0.0, 1.0, 0.0, 0.0]).expand(3, 4))  # e_{5 mod 4}
    torch.testing.assert_close(h_post, torch.ones(3, 4))
    torch.testing.assert_close(h_res, torch.eye(4).expand(3, 4, 4))
    no_decay = {id(p) for p in m.no_decay_parameters()}
    assert {id(m.static_pre), id(m.static_res), id(m.static_post), id(m.dyn_scale), id(m.norm.weight)} == no_decay


def test_each_stream_produces_its_own_row():
    torch.manual_seed(0)
    m = build_residual(ResidualConfig(kind="hc", n=4, hc_scale=0.5), 0, C, 1e-6)
    torch.nn.init.normal_(m.w_dyn)
    x = torch.randn(1, 1, 4, C)
    x2 = x.clone()
    x2[..., 2, :] += torch.randn(C)
    (p1, q1, r1), (p2, q2, r2) = m.coefficients(x), m.coefficients(x2)
    changed_rows = ((r1 - r2).abs().amax(-1) > 1e-6)[0, 0]
    assert changed_rows.tolist() == [False, False, True, False]
    assert ((p1 - p2).abs() > 1e-6)[0, 0].tolist() == [False, False, True, False]
    # and the update applies rows: F = 0 gives x_out[i] = sum_j H_res[i, j] x[j]
    out = m(x, lambda h: torch.zeros_like(h))
    torch.testing.assert_close(out, torch.einsum("btij,btjc->btic", r1, x))


def test_hc_res_from_column_is_the_hc_papers_transpose():
    """hc_res_from="column": stream j's vector produces column j of H_res (the HC paper's A_rᵀ), the
    same dynamic term as "row" transposed; the update still applies x_out[i] = Σ_j H_res[i, j] x[j]."""
    torch.manual_seed(0)
    row = build_residual(ResidualConfig(kind="hc", n=4, hc_scale=0.5), 0, C, 1e-6)
    col = build_residual(ResidualConfig(kind="hc", n=4, hc_scale=0.5, hc_res_from="column"), 0, C, 1e-6)
    torch.nn.init.normal_(row.w_dyn)
    col.load_state_dict(row.state_dict())
    x = torch.randn(1, 2, 4, C)
    eye = torch.eye(4)
    torch.testing.assert_close(col.coefficients(x)[2] - eye, (row.coefficients(x)[2] - eye).transpose(-1, -2))
    x2 = x.clone()
    x2[..., 2, :] += torch.randn(C)
    changed_cols = ((col.coefficients(x)[2] - col.coefficients(x2)[2]).abs().amax(-2) > 1e-6)[0, 0]
    assert changed_cols.tolist() == [False, False, True, False]
    out = col(x, lambda h: torch.zeros_like(h))
    torch.testing.assert_close(out, torch.einsum("btij,btjc->btic", col.coefficients(x)[2], x))
    with pytest.raises(ValueError, match="hc_res_from='rows' is unknown; allowed: row, column"):
        ResidualConfig(kind="hc", hc_res_from="rows").validate()


@pytest.mark.parametrize("switch", ["use_h_pre", "use_h_post", "use_h_res"])
def test_hc_ablation_switches(switch):
    torch.manual_seed(0)
    m = build_residual(ResidualConfig(kind="hc", n=4, hc_scale=0.5, **{switch: False}), 0, C, 1e-6)
    torch.nn.init.normal_(m.w_dyn)
    h_pre, h_post, h_res = m.coefficients(torch.randn(2, 3, 4, C))
    expected = {"use_h_pre": (h_pre, torch.full((2, 3, 4), 0.25)),
                "use_h_post": (h_post, torch.ones(2, 3, 4)),
                "use_h_res": (h_res, torch.eye(4).expand(2, 3, 4, 4))}[switch]
    torch.testing.assert_close(*expected)


def _hc_reference(x, norm_w, eps, w_dyn, s_alpha, s_beta, a_m, a_r, b, branch):
    """HC (PAPER.md §1) token by token from its formulas, float64: x [N, n, C] -> [N, n, C]."""
    out = torch.empty_like(x)
    for t in range(x.shape[0]):
        xt = x[t]
        xn = xt * torch.rsqrt(xt.pow(2).mean(-1, keepdim=True) + eps) * norm_w
        d = torch.tanh(xn @ w_dyn)  # row i from stream i
        h_pre = s_alpha * d[:, 0] + a_m
        h_post = s_beta * d[:, 1] + b
        h_res = s_alpha * d[:, 2:] + a_r
        out[t] = h_res @ xt + h_post[:, None] * branch(h_pre @ xt)[None]
    return out


def test_hc_dynamic_scales_are_learnable_and_match_the_formulas():
    """s_alpha (H_pre, H_res) and s_beta (H_post) are learnable, init hc_scale (HC paper pseudo-code:
    dynamic_alpha_scale / dynamic_beta_scale = nn.Parameter(0.01)); values and gradients match an
    independent float64 implementation."""
    torch.manual_seed(0)
    n, N = 4, 5
    m = build_residual(ResidualConfig(kind="hc", n=n), 2, C, 1e-6).double()
    assert isinstance(m.dyn_scale, torch.nn.Parameter)
    torch.testing.assert_close(m.dyn_scale, torch.full((2,), 0.01, dtype=torch.float64), rtol=1e-6, atol=0)
    with torch.no_grad():
        m.w_dyn.normal_()
        m.dyn_scale.copy_(torch.tensor([0.3, 0.7]))
        m.static_res.add_(0.1 * torch.randn(n, n))
        m.norm.weight.uniform_(0.5, 1.5)
    wb = torch.randn(C, C, dtype=torch.float64) / 4
    branch = lambda h: torch.tanh(h @ wb)  # noqa: E731
    x = torch.randn(N, 1, n, C, dtype=torch.float64)
    got = m(x, branch)
    params = [m.norm.weight, m.w_dyn, m.dyn_scale, m.static_pre, m.static_res, m.static_post]
    ref = _hc_reference(x[:, 0], m.norm.weight, 1e-6, m.w_dyn, m.dyn_scale[0], m.dyn_scale[1],
                        m.static_pre, m.static_res, m.static_post, branch)
    torch.testing.assert_close(got[:, 0], ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ref)
    grads = torch.autograd.grad((got[:, 0] * g).sum(), params)
    grads_ref = torch.autograd.grad((ref * g).sum(), params)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert grads[2].abs().min() > 0  # both scales get a gradient once W != 0


def test_hc_scale_at_init_gets_no_gradient_but_does_after_w_moves():
    m = build_residual(ResidualConfig(kind="hc", n=4), 0, C, 1e-6)
    x = torch.randn(2, 3, 4, C)
    m(x, lambda h: h).sum().backward()
    assert torch.equal(m.dyn_scale.grad, torch.zeros(2))  # tanh(0) = 0
    assert m.w_dyn.grad.abs().sum() > 0  # W moves first, then the scales learn


def test_hc_fixed_scale_option():
    m = build_residual(ResidualConfig(kind="hc", n=4, hc_scale=0.5, hc_scale_learnable=False), 0, C, 1e-6)
    assert not hasattr(m, "dyn_scale") and "dyn_scale" not in dict(m.named_parameters())
    torch.nn.init.normal_(m.w_dyn)
    x = torch.randn(1, 2, 4, C)
    h_pre, _, _ = m.coefficients(x)
    xn = torch.nn.functional.rms_norm(x, (C,), m.norm.weight, 1e-6)
    torch.testing.assert_close(h_pre, 0.5 * torch.tanh(xn @ m.w_dyn)[..., 0] + m.static_pre)
    with pytest.raises(ValueError, match="hc_scale_learnable"):
        ResidualConfig(kind="hc", hc_scale_learnable="yes").validate()


def test_hc_checkpoint_without_scales_loads_as_the_fixed_scales():
    """A state dict from before the scales were learnable (no dyn_scale) loads into a learnable-scale
    module and gives the same coefficients as the fixed-scale module it came from."""
    old = build_residual(ResidualConfig(kind="hc", n=4, hc_scale=0.3, hc_scale_learnable=False), 1, C, 1e-6)
    torch.nn.init.normal_(old.w_dyn)
    new = build_residual(ResidualConfig(kind="hc", n=4, hc_scale=0.3), 1, C, 1e-6)
    with pytest.warns(UserWarning, match="dyn_scale missing"):
        new.load_state_dict(old.state_dict())  # strict: the missing key is filled, not ignored
    assert torch.equal(new.dyn_scale.detach(), torch.full((2,), 0.3))
    x = torch.randn(2, 3, 4, C)
    for a, b in zip(old.coefficients(x), new.coefficients(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
