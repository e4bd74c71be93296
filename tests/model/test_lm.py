"""LM: forward/backward of every variant x small preset, KV cache (incl. left padding), param groups,
diagnostics capture, activation checkpointing, init scaling."""

import math

import pytest
import torch
import torch.nn.functional as F

from mhc_repro.model import LM
from mhc_repro.model.params import count_params
from mhc_repro.presets import get_preset, with_variant

VARIANTS = ("residual", "hc", "mhc")


def _model(preset: str, variant: str, seed: int = 0, **cfg_overrides) -> LM:
    torch.manual_seed(seed)
    cfg = with_variant(get_preset(preset), variant)
    for k, v in cfg_overrides.items():
        setattr(cfg, k, v)
    return LM(cfg)


@pytest.mark.parametrize("preset", ["tiny", "tiny-moe"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_forward_backward(preset, variant):
    m = _model(preset, variant)
    idx = torch.randint(0, m.cfg.vocab_size, (2, 12))
    logits = m(idx)
    assert logits.shape == (2, 12, m.cfg.vocab_size) and logits.dtype == torch.float32
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), idx[:, 1:].flatten())
    assert abs(loss.item() - math.log(m.cfg.vocab_size)) < 0.5  # near-uniform at init
    loss.backward()
    for name, p in m.named_parameters():  # every parameter, unused routed experts included (zero grad)
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    counts = m.num_params()
    assert counts["total"] == sum(p.numel() for p in m.parameters())
    assert counts == count_params(m.cfg)  # meta-device count equals the real model


def test_small_preset_on_meta():
    c = count_params(get_preset("small"))
    assert 90e6 < c["total"] < 130e6 and c["active"] == c["total"] - c["embedding"]


def _incremental(m, idx, mask=None, split=5):
    cache = m.new_cache(idx.shape[0], idx.shape[1] + 3)
    parts = [m(idx[:, :split], cache=cache, attention_mask=None if mask is None else mask[:, :split])]
    for t in range(split, idx.shape[1]):
        parts.append(m(idx[:, t : t + 1], cache=cache, attention_mask=None if mask is None else mask[:, : t + 1]))
    assert cache.length == idx.shape[1]
    return torch.cat(parts, dim=1)


@pytest.mark.parametrize("preset", ["tiny", "tiny-moe"])
@pytest.mark.parametrize("variant", ["residual", "mhc"])
def test_kv_cache_matches_full_forward(preset, variant):
    m = _model(preset, variant).eval()
    idx = torch.randint(0, m.cfg.vocab_size, (2, 11))
    with torch.no_grad():
        full = m(idx)
        inc = _incremental(m, idx)
    torch.testing.assert_close(inc, full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("preset", ["tiny", "tiny-moe"])
def test_left_padding_matches_unpadded_rows(preset):
    m = _model(preset, "hc").eval()
    v = m.cfg.vocab_size
    a, b = torch.randint(0, v, (1, 10)), torch.randint(0, v, (1, 7))
    pad = 3
    idx = torch.cat([a, torch.cat([torch.full((1, pad), 5), b], dim=1)])
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :pad] = 0
    with torch.no_grad():
        ref_a, ref_b = m(a), m(b)
        full = m(idx, attention_mask=mask)
        inc = _incremental(m, idx, mask)
    for out in (full, inc):
        torch.testing.assert_close(out[0], ref_a[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out[1, pad:], ref_b[0], atol=1e-4, rtol=1e-4)
        assert torch.isfinite(out).all()


def test_bad_inputs_one_line_errors():
    m = _model("tiny", "residual")
    with pytest.raises(ValueError, match="attention_mask shape"):
        m(torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.ones(2, 5))
    cache = m.new_cache(1, 4)
    with pytest.raises(ValueError, match="KV cache overflow"):
        m(torch.zeros(1, 5, dtype=torch.long), cache=cache)


@pytest.mark.parametrize("preset", ["tiny", "tiny-moe"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_param_groups_cover_each_parameter_once(preset, variant):
    m = _model(preset, variant)
    groups = m.param_groups(0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))
    no_decay = {id(p) for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    names = {id(p): n for n, p in m.named_parameters()}
    nd_names = {names[i] for i in no_decay}
    assert all(p.dim() < 2 or id(p) not in no_decay or "residual" in names[id(p)] for p in m.parameters())
    assert "norm.weight" in nd_names and "blocks.0.attn_norm.weight" in nd_names
    assert "head.weight" not in nd_names and "blocks.0.attn.out_proj.weight" not in nd_names
    if variant == "hc":
        assert any("static_res" in n for n in nd_names)
    if variant == "mhc":
        assert any(n.endswith("alpha") for n in nd_names) and any("phi" in n for n in names.values())
    assert all("routing_bias" not in n for n in names.values())  # a buffer, never optimised


@pytest.mark.parametrize("variant", VARIANTS)
def test_capture_diagnostics(variant):
    m = _model("tiny", variant)
    idx = torch.randint(0, m.cfg.vocab_size, (2, 6))
    with m.capture_diagnostics():
        m(idx)
    mats = m.residual_matrices()
    n = m.cfg.residual.num_streams
    assert len(mats) == 2 * m.cfg.n_blocks and mats[0].shape == (2, 6, n, n)
    if variant == "mhc":  # rows are the exact Sinkhorn side
        torch.testing.assert_close(mats[3].sum(-1), torch.ones(2, 6, n), atol=1e-4, rtol=0)


def test_activation_checkpointing_same_gradients():
    idx = torch.randint(0, 8192, (2, 8))
    grads = []
    for ckpt in (False, True):
        m = _model("tiny-moe", "mhc", seed=1, activation_checkpointing=ckpt)
        F.cross_entropy(m(idx).flatten(0, 1), idx.flatten()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_stream_recompute_same_gradients():
    """residual.recompute="stream" (tests/residual/test_recompute.py) on MLA + MoE: same gradients."""
    idx = torch.randint(0, 8192, (2, 8))
    grads = []
    for recompute in ("none", "stream"):
        torch.manual_seed(1)
        m = LM(with_variant(get_preset("tiny-moe"), "mhc", recompute=recompute))
        assert all(b.recompute_stream == (recompute != "none") for b in m.blocks)
        F.cross_entropy(m(idx).flatten(0, 1), idx.flatten()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_output_projection_init_scaled_for_hc():
    stds = {}
    for variant in ("residual", "hc"):
        m = _model("tiny", variant)
        stds[variant] = (m.blocks[0].attn.out_proj.weight.std().item(), m.blocks[0].ffn.down_proj.weight.std().item(),
                         m.blocks[0].attn.q_proj.weight.std().item())
    assert abs(stds["residual"][0] - 0.02) < 2e-3 and abs(stds["residual"][2] - 0.02) < 2e-3
    assert abs(stds["hc"][0] - 0.01) < 1e-3 and abs(stds["hc"][1] - 0.01) < 1e-3  # 0.02 / sqrt(4)
    assert abs(stds["hc"][2] - 0.02) < 2e-3
