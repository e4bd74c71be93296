"""MoEConfig.shuffle: "gather" moves tokens to their experts and back with gathers only, and gives
the values and gradients of "index_add" (the scatter-add path) up to fp32 summation order."""

import typing

import pytest
import torch

from mhc_repro.config import ModelConfig, MoEConfig
from mhc_repro.model import moe_shuffle
from mhc_repro.model.moe import MoE


def _moe(shuffle: str, k: int = 3, seed: int = 0, dispatch: str = "bmm") -> MoE:
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=16, ffn="moe", moe=MoEConfig(n_routed=8, n_active_routed=k, n_shared=1,
                      expert_width=8, route_scale=2.5, dispatch=dispatch, shuffle=shuffle))
    return MoE(cfg).train()


def _step(moe: MoE, x: torch.Tensor, call=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x = x.clone().requires_grad_(True)
    y = (moe if call is None else call)(x)
    (y * torch.linspace(-1, 1, y.numel(), device=y.device).view_as(y)).sum().backward()
    grads = {"x": x.grad} | {n: p.grad for n, p in moe.named_parameters() if p.grad is not None}
    return y.detach(), grads


@pytest.mark.parametrize("k", [1, 2, 3])
def test_gather_equals_index_add(k):
    x = torch.randn(2, 13, 16)
    y0, g0 = _step(_moe("index_add", k), x)
    y1, g1 = _step(_moe("gather", k), x)
    torch.testing.assert_close(y1, y0, rtol=1e-6, atol=1e-6)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-5, atol=1e-6, msg=name)


def _backward_nodes(y: torch.Tensor) -> set[str]:
    seen, todo, names = set(), [y.grad_fn], set()
    while todo:
        fn = todo.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        todo += [nxt for nxt, _ in fn.next_functions]
    return names


def _elementwise_experts(moe: MoE) -> MoE:
    """The experts replaced by an elementwise map: the graph then holds only the shuffle's moves."""
    moe._run_experts = lambda xs, counts: torch.tanh(xs) * 1.5
    return moe


def test_gather_has_no_scatter_in_its_backward():
    x = torch.randn(20, 16, requires_grad=True)
    scatter = {"IndexSelectBackward0", "IndexAddBackward0"}
    assert _backward_nodes(_elementwise_experts(_moe("index_add"))(x)) & scatter  # the check sees them
    assert not _backward_nodes(_elementwise_experts(_moe("gather"))(x)) & scatter


def test_inverse_permutation():
    order = torch.randperm(37)
    inv = moe_shuffle.inverse(order)
    assert torch.equal(inv[order], torch.arange(37)) and torch.equal(order[inv], torch.arange(37))


def test_gather_bf16_rounds_once():
    moe = _moe("gather").to(torch.bfloat16)
    x = torch.randn(40, 16).to(torch.bfloat16)
    ref = _moe("index_add").to(torch.bfloat16)
    y, y_ref = moe(x), ref(x)
    assert y.dtype == torch.bfloat16
    # both sum a token's k outputs in fp32 and round once: equal but for fp32 summation order
    assert (y.float() == y_ref.float()).float().mean() > 0.99


@pytest.mark.slow
def test_gather_compiles_to_the_eager_values():
    """One graph, no break (the bmm dispatch's host sync is left out: elementwise experts)."""
    moe = _elementwise_experts(_moe("gather"))
    x = torch.randn(24, 16)
    y0, g0 = _step(moe, x)
    moe.zero_grad()
    y1, g1 = _step(moe, x, call=torch.compile(moe, fullgraph=True, dynamic=False))
    assert g1.keys() == g0.keys() and "router.weight" in g0
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-6)
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-4, atol=1e-6, msg=name)


def test_config_choices_and_bad_value():
    choices = typing.get_args(typing.get_type_hints(MoEConfig)["shuffle"])
    assert choices == moe_shuffle.SHUFFLES
    with pytest.raises(ValueError, match="moe.shuffle='scatter'; allowed: 'index_add', 'gather'"):
        MoEConfig(shuffle="scatter").validate()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gather_on_cuda_matches_and_repeats_bit_for_bit():
    """bf16 on CUDA (the grouped dispatch): "gather" matches "index_add" within bf16 rounding, and two
    runs give the same bits (no atomics); the index_add backward's atomics need not."""
    x = torch.randn(4096, 16, device="cuda").to(torch.bfloat16)
    runs = {}
    for shuffle in ("index_add", "gather", "gather"):
        moe = _moe(shuffle, dispatch="auto").to(device="cuda", dtype=torch.bfloat16)
        runs.setdefault(shuffle, []).append(_step(moe, x))
    (y0, g0), ((y1, g1), (y2, g2)) = runs["index_add"][0], runs["gather"]
    torch.testing.assert_close(y1.float(), y0.float(), rtol=2e-2, atol=2e-2)
    for name in g0:
        torch.testing.assert_close(g1[name].float(), g0[name].float(), rtol=5e-2, atol=5e-2, msg=name)
    assert torch.equal(y1, y2) and all(torch.equal(g1[n], g2[n]) for n in g1)
