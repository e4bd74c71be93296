import pytest
import torch
from torch import nn


class Branch(nn.Module):
    """A branch as the LM builds it: its own RMSNorm, then a small nonlinear map [B,T,C] -> [B,T,C]."""

    def __init__(self, c: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(c, eps=eps)
        self.up, self.down = nn.Linear(c, 2 * c), nn.Linear(2 * c, c)

    def forward(self, h):
        return self.down(torch.nn.functional.gelu(self.up(self.norm(h))))


@pytest.fixture
def make_branch():
    def make(c: int, seed: int = 0, eps: float = 1e-6) -> Branch:
        torch.manual_seed(seed)
        return Branch(c, eps).double()
    return make


@pytest.fixture
def branch_cls():
    return Branch
