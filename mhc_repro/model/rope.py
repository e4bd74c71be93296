"""Rotary position embedding with explicit per-row positions.

Positions are a ``[B, T]`` integer tensor, so left-padded batches can give each row its own positions
(the count of real tokens before each token). cos/sin are computed on the fly in fp32: cheap next to
attention and no fixed maximum length. Rotation convention: "rotate half" (Llama/HF), pairing dim i with
dim i + d/2.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rope_cos_sin(positions: Tensor, dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos, sin of shape [B, T, dim/2] (fp32) for integer ``positions`` [B, T]."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim))
    angles = positions.float().unsqueeze(-1) * inv_freq
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` [B, H, T, dim] with cos/sin [B, T, dim/2]; returns x's dtype."""
    half = x.shape[-1] // 2
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(x.dtype)
