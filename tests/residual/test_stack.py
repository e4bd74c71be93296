"""Forward + backward of every variant in a tiny LM-like stack (embedding -> L sub-layers -> head)."""

import pytest
import torch
from torch import nn

from mhc_repro.diagnostics import amax_gains
from mhc_repro.residual import ResidualConfig, StreamCollapse, build_residual, capture_h_res, expand_streams

C, V, L = 16, 32, 4


class TinyStack(nn.Module):
    def __init__(self, cfg: ResidualConfig, branch_cls) -> None:
        super().__init__()
        self.cfg = cfg
        self.emb = nn.Embedding(V, C)
        self.branches = nn.ModuleList(branch_cls(C) for _ in range(L))
        self.residuals = nn.ModuleList(build_residual(cfg, l, C, 1e-6) for l in range(L))
        self.collapse = StreamCollapse(cfg, C)
        self.norm = nn.RMSNorm(C, eps=1e-6)
        self.head = nn.Linear(C, V)

    def forward(self, idx):
        x = expand_streams(self.emb(idx), self.cfg.num_streams)
        for res, f in zip(self.residuals, self.branches):
            x = res(x, f)
        return self.head(self.norm(self.collapse(x)))


@pytest.mark.parametrize("kind,collapse", [("residual", "sum"), ("hc", "sum"), ("hc", "learned"),
                                           ("mhc", "sum"), ("mhc", "mean"), ("mhc", "learned")])
def test_tiny_stack_trains(kind, collapse, branch_cls):
    torch.manual_seed(0)
    model = TinyStack(ResidualConfig(kind=kind, collapse=collapse), branch_cls)
    idx = torch.randint(0, V, (4, 12))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        loss = nn.functional.cross_entropy(model(idx[:, :-1]).reshape(-1, V), idx[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    for res in model.residuals:  # every residual parameter is reached by the gradient
        for name, p in res.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    with capture_h_res(model) as layers:
        model(idx)
    mats = [m.last_h_res for m in layers]
    n = model.cfg.num_streams
    assert len(mats) == L and all(m.shape == (4, 12, n, n) for m in mats)
    gains = amax_gains(mats)
    if kind == "residual":
        assert gains["fwd_composite"] == [1.0] * L and gains["bwd_composite"] == [1.0] * L
    if kind == "mhc":
        assert gains["fwd_single_max"] <= 1 + 1e-5 and gains["fwd_composite_max"] <= 1 + 1e-5


def test_capture_off_records_nothing(branch_cls):
    model = TinyStack(ResidualConfig(kind="mhc"), branch_cls)
    model(torch.randint(0, V, (1, 5)))
    assert all(r.last_h_res is None for r in model.residuals)


def test_learned_collapse_starts_as_mean():
    cfg = ResidualConfig(kind="mhc", collapse="learned")
    x = torch.randn(2, 3, 4, C)
    torch.testing.assert_close(StreamCollapse(cfg, C)(x), x.mean(-2))
    with pytest.raises(ValueError, match="n=4"):
        StreamCollapse(cfg, C)(torch.randn(2, 3, 2, C))


@pytest.mark.parametrize("phi_init,bias_init,collapse,expect_identical", [
    ("zeros", "zeros", "sum", True),     # the degenerate init: symmetry never breaks
    ("zeros", "zeros", "mean", True),
    ("zeros", "hc", "sum", False),       # HC-like bias breaks it through the gradients
    ("normal", "hc", "sum", False),      # the default
])
def test_stream_symmetry_after_training(phi_init, bias_init, collapse, expect_identical, branch_cls):
    torch.manual_seed(0)
    cfg = ResidualConfig(kind="mhc", phi_init=phi_init, bias_init=bias_init, collapse=collapse)
    model = TinyStack(cfg, branch_cls)
    idx = torch.randint(0, V, (4, 12))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(idx[:, :-1]).reshape(-1, V), idx[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = expand_streams(model.emb(idx), 4)
    for res, f in zip(model.residuals, model.branches):
        x = res(x, f)
    spread = (x - x[..., :1, :]).abs().max().item()
    assert (spread < 1e-5) if expect_identical else (spread > 1e-3), spread
