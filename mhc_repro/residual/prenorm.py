"""Pre-Norm residual baseline: ``x_{l+1} = x_l + F(RMSNorm(x_l))`` with n = 1 (PAPER.md §1).

The sub-layer's RMSNorm (handed in, or held by the branch) and the addition on the [B, T, 1, C] view.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .base import Branch, StreamResidual, normed


class PreNormResidual(StreamResidual):
    n = 1

    def forward(self, x: Tensor, branch: Branch, norm: Optional[nn.Module] = None) -> Tensor:
        if x.dim() != 4 or x.shape[-2] != 1:
            raise ValueError(f"PreNormResidual expects x [B, T, 1, C]; got shape {tuple(x.shape)}")
        h = x.squeeze(-2)
        out = h + branch(normed(norm, h)).to(h.dtype)
        if self.capture:  # the identity: all Amax gains are exactly 1
            self._record(torch.ones(*x.shape[:-2], 1, 1, device=x.device), tuple(x.shape[:-2]))
        return out.unsqueeze(-2)
