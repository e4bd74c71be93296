"""MoE: routing rules (bias selects, unbiased scores gate), exact dispatch, aux-loss-free balancing."""

import pytest
import torch

from mhc_repro.config import ModelConfig, MoEConfig
from mhc_repro.model.moe import MoE


def _moe(rate=0.02, score_func="sigmoid", n_shared=1, seed=0) -> MoE:
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=16, ffn="moe", moe=MoEConfig(n_routed=8, n_active_routed=2, n_shared=n_shared,
                      expert_width=8, score_func=score_func, bias_update_rate=rate, route_scale=1.5))
    return MoE(cfg)


def _dense_reference(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, weighted by the (sparse) gates: the definition of the MoE output."""
    idx, gates = moe.route(x)
    w = torch.zeros(x.shape[0], moe.n_routed).scatter(1, idx, gates)
    out = sum(w[:, e : e + 1] * moe.experts[e](x) for e in range(moe.n_routed))
    return out + (moe.shared(x) if moe.shared is not None else 0)


@pytest.mark.parametrize("score_func", ["sigmoid", "softmax"])
def test_dispatch_matches_dense_reference(score_func):
    moe = _moe(score_func=score_func)
    x = torch.randn(3, 7, 16)
    torch.testing.assert_close(moe(x), _dense_reference(moe, x.reshape(-1, 16)).reshape(3, 7, 16))


def test_bf16_combine_rounds_once(monkeypatch):
    """A bf16 token's k gated expert outputs are summed in fp32 and rounded to bf16 once: the result is
    the fp64 sum rounded to bf16 (up to rare fp32 ties), not k successive bf16 roundings."""
    moe = _moe(n_shared=0).to(torch.bfloat16)
    moe.k = 4
    x = torch.randn(64, 16).to(torch.bfloat16)
    outs = {}

    def fake_experts(xs, counts):  # fixed expert outputs with many significant bits
        outs["out"] = torch.randn(xs.shape[0], 16, dtype=torch.float32).to(torch.bfloat16) * 3
        return outs["out"]

    monkeypatch.setattr(moe, "_run_experts", fake_experts)
    y = moe(x)
    idx, gates = moe.route(x)
    order = torch.argsort(idx.flatten(), stable=True)
    want = torch.zeros(64, 16, dtype=torch.float64).index_add_(
        0, order // moe.k, outs["out"].double() * gates.flatten()[order][:, None].double())
    assert y.dtype == torch.bfloat16
    assert (y.float() == want.to(torch.bfloat16).float()).float().mean() > 0.99


def test_gates_from_unbiased_scores():
    moe = _moe()
    x = torch.randn(50, 16)
    idx0, gates0 = moe.route(x)
    torch.testing.assert_close(gates0.sum(-1), torch.full((50,), 1.5))  # normalised, times route_scale
    moe.routing_bias[3] = 10.0  # force expert 3 into every token's selection
    idx, gates = moe.route(x)
    assert (idx == 3).any(dim=1).all()
    scores = torch.sigmoid(moe.router(x))
    sel = scores.gather(1, idx)
    torch.testing.assert_close(gates, 1.5 * sel / sel.sum(-1, keepdim=True))  # bias not in the gates


def _imbalance(moe: MoE, x: torch.Tensor) -> float:
    idx, _ = moe.route(x)
    load = torch.bincount(idx.flatten(), minlength=moe.n_routed).float()
    return (load.max() / load.mean()).item()


def test_routing_bias_balances_skewed_load():
    moe = _moe(rate=0.02).train()
    with torch.no_grad():  # skew: experts 0 and 1 are favoured by every token
        moe.router.weight[:2] += 2.0 * torch.ones(16) / 4
    x = torch.randn(512, 16) * 0.5 + 1.0
    before = _imbalance(moe, x)
    assert before > 3.0  # strongly skewed to start with
    for _ in range(60):
        with torch.no_grad():
            moe(x)
        assert moe.load.sum().item() == 512 * 2
        moe.update_routing_bias()
        assert moe.load.sum().item() == 0
    after = _imbalance(moe, x)
    assert after < 0.5 * before and after < 1.6, (before, after)
    assert moe.routing_bias[:2].max() < 0 < moe.routing_bias[2:].min()  # favoured experts pushed down


def test_bias_is_a_buffer_updated_outside_autograd():
    moe = _moe().train()
    assert "routing_bias" in moe.state_dict() and "load" not in moe.state_dict()
    assert all(p is not moe.routing_bias for p in moe.parameters())
    x = torch.randn(20, 16, requires_grad=True)
    moe(x).sum().backward()
    moe.update_routing_bias()
    assert not moe.routing_bias.requires_grad and moe.routing_bias.abs().sum() > 0


def test_eval_mode_and_zero_rate_do_not_move_bias():
    moe = _moe(rate=0.0).train()
    moe(torch.randn(20, 16))
    moe.update_routing_bias()
    assert moe.routing_bias.abs().sum() == 0
    moe = _moe().eval()
    moe(torch.randn(20, 16))
    assert moe.load.sum() == 0
    moe.update_routing_bias()
    assert moe.routing_bias.abs().sum() == 0
