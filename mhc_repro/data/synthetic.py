"""Synthetic token streams for numerics checks (loss-curve parity, golden curves): no corpus needed."""

from __future__ import annotations

from typing import Iterator

import torch


def bigram_batches(vocab: int, batch: int, seq: int, steps: int, seed: int) -> Iterator[torch.Tensor]:
    """``steps`` batches of [batch, seq + 1] tokens from a fixed random bigram chain (seeded): learnable,
    so a model's loss falls well below log(vocab) within a few dozen steps."""
    g = torch.Generator().manual_seed(seed)
    trans = torch.softmax(3.0 * torch.randn(vocab, vocab, generator=g), -1)
    for _ in range(steps):
        tok = torch.empty(batch, seq + 1, dtype=torch.long)
        tok[:, 0] = torch.randint(0, vocab, (batch,), generator=g)
        for t in range(seq):
            tok[:, t + 1] = torch.multinomial(trans[tok[:, t]], 1, generator=g).squeeze(1)
        yield tok
