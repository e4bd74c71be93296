"""MoE dispatch: every batched dispatch (bmm, grouped, loop) equals the original per-expert loop
(outputs, gradients, load counts), empty experts included; stacked expert weights keep the LM's init,
optimizer groups and parameter counts."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mhc_repro.config import ModelConfig, MoEConfig
from mhc_repro.model import LM
from mhc_repro.model.ffn import SwiGLU
from mhc_repro.model.moe import MoE
from mhc_repro.presets import get_preset, with_variant

MODES = ["loop", "bmm", "grouped", "auto"]


def _moe(dispatch="auto", n_routed=8, k=3, seed=0, score_func="sigmoid") -> MoE:
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=16, ffn="moe", moe=MoEConfig(n_routed=n_routed, n_active_routed=k, n_shared=1,
                      expert_width=8, score_func=score_func, route_scale=2.5, dispatch=dispatch))
    return MoE(cfg).train()


def _old_experts(moe: MoE) -> nn.ModuleList:
    """The pre-stacking layout (one SwiGLU per expert) holding copies of ``moe``'s expert weights."""
    old = nn.ModuleList(SwiGLU(16, 8) for _ in range(moe.n_routed))
    with torch.no_grad():
        for e, ex in enumerate(old):
            for name in ("gate_proj", "up_proj", "down_proj"):
                getattr(ex, name).weight.copy_(getattr(moe.experts, name).weight[e])
    return old


def _old_forward(moe: MoE, experts: nn.ModuleList, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The original dispatch (commit 338721b), verbatim but for the expert modules: output and counts."""
    shape = x.shape
    x = x.reshape(-1, shape[-1])
    idx, gates = moe.route(x)
    flat = idx.flatten()
    counts = torch.bincount(flat, minlength=moe.n_routed)
    order = torch.argsort(flat, stable=True)
    token = order // moe.k
    gate = gates.flatten()[order]
    y = torch.zeros_like(x)
    start = 0
    for e, c in enumerate(counts.tolist()):
        tok = token[start : start + c]
        out = experts[e](x.index_select(0, tok)) * gate[start : start + c, None].to(x.dtype)
        y.index_add_(0, tok, out.to(y.dtype))
        start += c
    y = y + moe.shared(x)
    return y.reshape(shape), counts


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("empty_experts", [False, True])
def test_dispatch_equals_original_loop(mode, empty_experts):
    moe = _moe(mode, score_func="softmax" if empty_experts else "sigmoid")
    if empty_experts:  # experts 5..7 get no token (a large negative bias never selects them)
        moe.routing_bias[5:] = -100.0
    old = _old_experts(moe)
    x = torch.randn(4, 9, 16, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    w = torch.randn(4, 9, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # grouped may fall back to bmm on this torch
        y = moe(x)
    y_ref, counts = _old_forward(moe, old, x_ref)
    torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=1e-5)
    assert torch.equal(moe.load, counts) and counts.sum() == 36 * 3
    assert (counts[5:] == 0).all() == empty_experts
    (y * w).sum().backward()
    (y_ref * w).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-6, rtol=1e-5)
    for name in ("gate_proj", "up_proj", "down_proj"):
        ref = torch.stack([getattr(ex, name).weight.grad for ex in old])
        torch.testing.assert_close(getattr(moe.experts, name).weight.grad, ref, atol=1e-6, rtol=1e-5)
    if empty_experts:  # unused experts get a zero gradient, not none
        assert moe.experts.down_proj.weight.grad[5:].abs().sum() == 0
    # the router gradient flows through the gates only, identically
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["bmm", "grouped"])
def test_routing_bias_update_identical_to_loop(mode):
    moes = [_moe("loop", n_routed=16, k=4), _moe(mode, n_routed=16, k=4)]
    x = torch.randn(64, 16) * 0.5 + 0.7  # skewed routing
    for _ in range(5):
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", RuntimeWarning)
            outs = [m(x) for m in moes]
        torch.testing.assert_close(outs[0], outs[1], atol=1e-6, rtol=1e-5)
        assert torch.equal(moes[0].load, moes[1].load)
        for m in moes:
            m.update_routing_bias()
        assert torch.equal(moes[0].routing_bias, moes[1].routing_bias)
    assert moes[1].routing_bias.abs().sum() > 0


def test_grouped_kernel_itself_matches_bmm():
    """run_grouped (torch._grouped_mm) directly, where this torch has a kernel for the device/dtype."""
    moe = _moe("grouped")
    xs = torch.randn(30, 16)
    counts = torch.tensor([4, 0, 7, 3, 0, 9, 6, 1])
    try:
        got = moe.experts.run_grouped(xs, counts, torch.float32)
    except (RuntimeError, AttributeError, NotImplementedError) as err:
        pytest.skip(f"torch._grouped_mm unavailable here: {err}")
    torch.testing.assert_close(got, moe.experts.run_bmm(xs, counts), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got, moe.experts.run_loop(xs, counts), atol=1e-6, rtol=1e-5)


def test_grouped_failure_falls_back_to_bmm(monkeypatch):
    moe = _moe("grouped")
    x = torch.randn(12, 16)
    ref = moe.experts.run_bmm  # same math, the path the fallback takes

    def broken(*args, **kwargs):
        raise RuntimeError("no grouped kernel")

    monkeypatch.setattr(torch, "_grouped_mm", broken)
    with pytest.warns(RuntimeWarning, match="grouped dispatch unavailable"):
        y = moe(x)
    assert moe._grouped_failed
    monkeypatch.setattr(moe.experts, "run_bmm", lambda *a: ref(*a) * 0 + 1.0)  # now provably the bmm path
    assert not torch.allclose(moe(x), y)


@pytest.mark.parametrize("mode", MODES)
def test_no_tokens(mode):
    moe = _moe(mode)
    x = torch.randn(0, 16, requires_grad=True)
    y = moe(x)
    y.sum().backward()
    assert y.shape == (0, 16) and moe.load.sum() == 0 and not moe._grouped_failed


def test_auto_on_cpu_is_bmm_and_bad_dispatch_rejected():
    moe = _moe("auto")
    moe.experts.run_grouped = lambda *a: (_ for _ in ()).throw(AssertionError("grouped used on CPU fp32"))
    moe(torch.randn(5, 16))
    with pytest.raises(ValueError, match=r"moe.dispatch='fast'.*'auto', 'loop', 'bmm', 'grouped'"):
        MoEConfig(dispatch="fast").validate()


def test_stacked_experts_keep_init_groups_and_counts():
    m = LM(with_variant(get_preset("tiny-moe"), "hc"))  # hc: output projections scaled by 1/sqrt(4)
    ex = m.blocks[1].ffn.experts
    assert ex.gate_proj.weight.shape == (8, 64, 128) and ex.down_proj.weight.shape == (8, 128, 64)
    assert abs(ex.gate_proj.weight.std().item() - 0.02) < 1e-3
    assert abs(ex.down_proj.weight.std().item() - 0.01) < 1e-3
    decay = {id(p) for p in m.param_groups(0.1)[0]["params"]}
    assert all(id(p.weight) in decay for p in (ex.gate_proj, ex.up_proj, ex.down_proj))
    c = m.num_params()
    per_expert = 3 * 128 * 64
    assert c["moe_routed"] == 3 * 8 * per_expert  # 3 MoE blocks x 8 experts
    assert c["total"] - c["embedding"] - c["active"] == 3 * (8 - 2) * per_expert
    with pytest.raises(TypeError, match="weights only"):
        ex.gate_proj(torch.randn(2, 128))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_dispatches_agree():
    """3B-like routing (64 experts, top-6) under bf16 autocast: grouped (if the kernel runs here),
    bmm and loop give the same outputs and gradients up to bf16 rounding."""
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=256, ffn="moe", moe=MoEConfig(n_routed=64, n_active_routed=6, n_shared=2,
                      expert_width=128, dispatch="loop"))
    ref = MoE(cfg).cuda().train()
    x = torch.randn(2048, 256, device="cuda")
    results = {}
    for mode in ("loop", "bmm", "grouped"):
        ref.dispatch, ref._grouped_failed = mode, False
        ref.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            y = ref(xi)
        y.float().square().mean().backward()
        results[mode] = (y.float(), xi.grad, ref.experts.down_proj.weight.grad, ref._grouped_failed)
    for mode in ("bmm", "grouped"):
        for got, want in zip(results[mode][:3], results["loop"][:3]):
            assert ((got.float() - want.float()).norm() / want.float().norm()).item() < 2e-2, mode
    if torch.cuda.get_device_capability() >= (9, 0):
        assert not results["grouped"][3], "torch._grouped_mm fell back on an sm90+ GPU"
