"""Pre-Norm residual baseline: ``x_{l+1} = x_l + F(RMSNorm(x_l))`` with n = 1 (PAPER.md §1).

The branch holds its own RMSNorm, so this module is just the addition on the [B, T, 1, C] view.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Branch, StreamResidual


class PreNormResidual(StreamResidual):
    n = 1

    def forward(self, x: Tensor, branch: Branch) -> Tensor:
        if x.dim() != 4 or x.shape[-2] != 1:
            raise ValueError(f"PreNormResidual expects x [B, T, 1, C]; got shape {tuple(x.shape)}")
        h = x.squeeze(-2)
        out = h + branch(h).to(h.dtype)
        if self.capture:  # the identity: all Amax gains are exactly 1
            self._record(torch.ones(*x.shape[:-2], 1, 1, device=x.device), tuple(x.shape[:-2]))
        return out.unsqueeze(-2)
