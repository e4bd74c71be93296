"""Parameter counts (total / active / breakdown), computed on the meta device (no memory).

Counting convention (PAPER.md §3): active = total minus the input embedding (a lookup, not a matmul;
"one vocab matrix" is active) minus the routed experts a token does not use
((n_routed - n_active_routed) experts per MoE layer).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from mhc_repro.config import ModelConfig


def _n(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def param_breakdown(model: nn.Module) -> dict:
    """Counts for an ``LM`` instance (any device, meta included)."""
    from .moe import MoE

    out = {"embedding": _n(model.embed), "head": _n(model.head), "attention": 0, "dense_ffn": 0,
           "moe_routed": 0, "moe_shared": 0, "router": 0, "norms": _n(model.norm), "residual": 0,
           "collapse": _n(model.collapse)}
    inactive = 0
    for b in model.blocks:
        out["attention"] += _n(b.attn)
        out["norms"] += _n(b.attn_norm) + _n(b.ffn_norm)
        out["residual"] += _n(b.attn_residual) + _n(b.ffn_residual)
        if isinstance(b.ffn, MoE):
            per_expert = _n(b.ffn.experts[0])
            out["moe_routed"] += _n(b.ffn.experts)
            out["moe_shared"] += _n(b.ffn.shared)
            out["router"] += _n(b.ffn.router)
            inactive += (b.ffn.n_routed - b.ffn.k) * per_expert
        else:
            out["dense_ffn"] += _n(b.ffn)
    # norms inside attention (MLA kv/q norms) are counted under attention
    total = sum(p.numel() for p in model.parameters())
    assert total == sum(out.values()), "parameter breakdown does not cover the model"
    out["total"] = total
    out["active"] = total - out["embedding"] - inactive
    return out


@contextlib.contextmanager
def _skip_default_init() -> Iterator[None]:
    """nn.Linear/nn.Embedding run their default init even on meta tensors, which costs seconds for
    the thousands of experts of the paper presets; counting needs shapes only (as HF's no_init_weights)."""
    saved = {cls: cls.reset_parameters for cls in (nn.Linear, nn.Embedding)}
    try:
        for cls in saved:
            cls.reset_parameters = lambda self: None
        yield
    finally:
        for cls, fn in saved.items():
            cls.reset_parameters = fn


def count_params(cfg: ModelConfig) -> dict:
    """Breakdown for ``cfg`` without allocating weights."""
    from .transformer import LM

    with torch.device("meta"), _skip_default_init():
        model = LM(cfg)
    return model.num_params()
