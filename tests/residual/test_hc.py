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
    assert {id(m.static_pre), id(m.static_res), id(m.static_post), id(m.norm.weight)} == no_decay


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
