"""A minimal causal LM with the DESIGN.md ``LM`` interface (forward with cache/attention_mask, new_cache).

It lets the evaluation tests exercise batching, padding and caching independently of the real model;
every property is also checked against ``mhc_repro.model.LM`` in the tests that import it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Cache:
    def __init__(self, batch_size: int, max_len: int):
        self.batch_size, self.max_len, self.length = batch_size, max_len, 0
        self.k = self.v = None


class StandInLM(nn.Module):
    def __init__(self, vocab_size: int = 300, d: int = 32, max_pos: int = 512, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = nn.Parameter(torch.randn(vocab_size, d, generator=g))
        self.pos = nn.Parameter(torch.randn(max_pos, d, generator=g) * 0.5)
        self.qkv = nn.Parameter(torch.randn(d, 3 * d, generator=g) / d**0.5)
        self.head = nn.Parameter(torch.randn(d, vocab_size, generator=g) / d**0.5)

    def new_cache(self, batch_size: int, max_len: int) -> _Cache:
        return _Cache(batch_size, max_len)

    def forward(self, idx, *, cache=None, attention_mask=None):
        b, t = idx.shape
        past = cache.length if cache is not None else 0
        if attention_mask is None:
            attention_mask = torch.ones(b, past + t, dtype=torch.long, device=idx.device)
        am = attention_mask.bool()
        # Position of each token = number of real tokens before it in its row (DESIGN.md).
        pos = (am.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
        h = self.emb[idx] + self.pos[pos]
        q, k, v = (h @ self.qkv).chunk(3, dim=-1)
        if cache is not None:
            if cache.k is not None:
                k, v = torch.cat([cache.k, k], 1), torch.cat([cache.v, v], 1)
            cache.k, cache.v = k, v
            cache.length += t
        s = past + t
        causal = torch.ones(t, s, dtype=torch.bool, device=idx.device).tril(past)
        allowed = causal[None] & am[:, None, :]
        # A padded query row sees nothing; let it see itself to avoid NaNs (its output is never used).
        ar = torch.arange(s, device=idx.device)
        allowed = allowed | (ar[None, :] == ar[:t, None] + past)[None]
        att = (q @ k.transpose(1, 2)) / q.shape[-1] ** 0.5
        att = att.masked_fill(~allowed, float("-inf"))
        out = F.softmax(att, -1) @ v + h
        return (out @ self.head).float()


class CountingLM(nn.Module):
    """Deterministic greedy output: always predicts ``(last token + 1) % vocab`` (for stop-string tests)."""

    def __init__(self, vocab_size: int = 50):
        super().__init__()
        self.vocab_size = vocab_size
        self.dummy = nn.Parameter(torch.zeros(1))

    def new_cache(self, batch_size: int, max_len: int) -> _Cache:
        return _Cache(batch_size, max_len)

    def forward(self, idx, *, cache=None, attention_mask=None):
        if cache is not None:
            cache.length += idx.shape[1]
        return F.one_hot((idx + 1) % self.vocab_size, self.vocab_size).float() * 10.0


def real_lm(preset: str = "tiny", variant: str = "mhc", vocab_size: int = 512, seed: int = 0):
    """The project's LM with random weights (a tiny preset, vocab shrunk to the test tokenizer's)."""
    from mhc_repro.model.transformer import LM
    from mhc_repro.presets import get_preset, with_variant

    cfg = get_preset(preset)
    cfg.vocab_size = vocab_size
    if variant != "residual":
        cfg = with_variant(cfg, variant)
    torch.manual_seed(seed)
    return LM(cfg.validate()).eval()
