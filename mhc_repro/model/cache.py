"""KV cache for incremental decoding: full K and V per layer (also for MLA — simple and exact; the
latent-only cache of DeepSeek-V3 is a memory optimisation we do not need here)."""

from __future__ import annotations

from typing import Optional

from torch import Tensor


class LayerKV:
    """One attention layer's K/V buffers [B, H, max_len, D], allocated on first write (the dtype,
    device and head sizes come from the first keys written)."""

    def __init__(self, batch_size: int, max_len: int) -> None:
        self.batch_size, self.max_len = batch_size, max_len
        self.k: Optional[Tensor] = None
        self.v: Optional[Tensor] = None

    def update(self, k: Tensor, v: Tensor, start: int) -> tuple[Tensor, Tensor]:
        """Write k, v [B, H, T, D] at positions start..start+T; return all keys/values so far."""
        b, _, t, _ = k.shape
        if b != self.batch_size:
            raise ValueError(f"KV cache batch size is {self.batch_size}, got a batch of {b}")
        if start + t > self.max_len:
            raise ValueError(f"KV cache overflow: {start}+{t} tokens > max_len={self.max_len}")
        if self.k is None:
            self.k = k.new_zeros(b, k.shape[1], self.max_len, k.shape[3])
            self.v = v.new_zeros(b, v.shape[1], self.max_len, v.shape[3])
        self.k[:, :, start : start + t] = k
        self.v[:, :, start : start + t] = v
        return self.k[:, :, : start + t], self.v[:, :, : start + t]


class KVCache:
    """Per-layer K/V plus the number of positions already filled (``length``). ``LM.forward`` advances
    ``length`` by the number of new tokens after each call."""

    def __init__(self, n_layers: int, batch_size: int, max_len: int) -> None:
        if batch_size <= 0 or max_len <= 0:
            raise ValueError(f"KV cache needs batch_size > 0 and max_len > 0, got {batch_size}, {max_len}")
        self.batch_size, self.max_len = batch_size, max_len
        self.layers = [LayerKV(batch_size, max_len) for _ in range(n_layers)]
        self.length = 0

    def reset(self) -> None:
        self.length = 0
        for layer in self.layers:
            layer.k = layer.v = None
