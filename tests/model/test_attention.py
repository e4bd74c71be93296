"""Attention and RoPE: MLA options (q-LoRA), GQA, RoPE relative-position property."""

import torch

from mhc_repro.model import LM
from mhc_repro.model.rope import apply_rope, rope_cos_sin
from mhc_repro.presets import get_preset


def test_rope_depends_on_relative_position_only():
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(pq, pk):
        cq, sq = rope_cos_sin(torch.tensor([[pq]]), 16, 10000.0)
        ck, sk = rope_cos_sin(torch.tensor([[pk]]), 16, 10000.0)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    torch.testing.assert_close(score(7, 3), score(104, 100))
    assert not torch.allclose(score(7, 3), score(7, 5))


def _cached_equals_full(cfg):
    torch.manual_seed(0)
    m = LM(cfg).eval()
    idx = torch.randint(0, cfg.vocab_size, (2, 9))
    with torch.no_grad():
        full = m(idx)
        cache = m.new_cache(2, 9)
        inc = torch.cat([m(idx[:, :4], cache=cache)] + [m(idx[:, t : t + 1], cache=cache) for t in range(4, 9)], 1)
    torch.testing.assert_close(inc, full, atol=1e-4, rtol=1e-4)
    return m


def test_mla_with_query_lora():
    cfg = get_preset("tiny-moe")
    cfg.attention.q_lora_rank = 32
    cfg.attention.v_head_dim = 24
    m = _cached_equals_full(cfg.validate())
    a = m.blocks[0].attn
    assert a.q_down.weight.shape == (32, 128) and a.q_up.weight.shape == (4 * (32 + 16), 32)
    assert a.out_proj.weight.shape == (128, 4 * 24)


def test_grouped_query_attention():
    cfg = get_preset("tiny")
    cfg.attention.n_kv_heads = 2
    m = _cached_equals_full(cfg.validate())
    assert m.blocks[0].attn.k_proj.weight.shape == (2 * 32, 128)


def test_causality():
    torch.manual_seed(0)
    m = LM(get_preset("tiny-moe")).eval()
    idx = torch.randint(0, 8192, (1, 8))
    idx2 = idx.clone()
    idx2[0, 5:] = (idx2[0, 5:] + 1) % 8192
    with torch.no_grad():
        torch.testing.assert_close(m(idx)[:, :5], m(idx2)[:, :5])
