"""DeepSeek-V3 style mixture of experts with auxiliary-loss-free load balancing.

Routing (per token): scores s = sigmoid(x W_r) (or softmax); the top-k experts are *selected* by
s + b (b = per-expert routing bias, a buffer), while the *gates* come from the unbiased scores of the
selected experts, normalised to sum to 1 (sigmoid) and multiplied by ``route_scale``.
Balancing: each training forward adds the number of tokens routed to every expert to ``load``;
``update_routing_bias()`` (called by the trainer after an optimizer step, outside autograd) does
``b += rate * sign(mean(load) - load)`` and clears ``load``. Over-loaded experts get a lower bias.
Shared experts are one SwiGLU of width n_shared * expert_width (same function as separate experts).
Dispatch: tokens sorted by expert, one matmul group per expert (simple and exact; no capacity drop).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mhc_repro.config import ModelConfig

from .ffn import SwiGLU


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        m = cfg.moe
        self.n_routed, self.k = m.n_routed, m.n_active_routed
        self.score_func, self.route_scale, self.rate = m.score_func, m.route_scale, m.bias_update_rate
        self.router = nn.Linear(cfg.d_model, m.n_routed, bias=False)
        self.experts = nn.ModuleList(SwiGLU(cfg.d_model, m.expert_width) for _ in range(m.n_routed))
        self.shared = SwiGLU(cfg.d_model, m.n_shared * m.expert_width) if m.n_shared > 0 else None
        # the bias is model state (a checkpointed buffer, never optimised)
        self.register_buffer("routing_bias", torch.zeros(m.n_routed))
        # Load counted since the last update: a plain int64 attribute, not a buffer, so that DDP's
        # buffer broadcast cannot overwrite a rank's own counts and model.to(bf16) cannot round them.
        self._load: Optional[Tensor] = None

    @property
    def load(self) -> Tensor:
        """Tokens routed to each expert by training forwards since the last ``update_routing_bias()``."""
        if self._load is None:
            return torch.zeros(self.n_routed, dtype=torch.long, device=self.routing_bias.device)
        return self._load

    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Expert indices [N, k] (long) and gates [N, k] (fp32) for tokens x [N, C]."""
        logits = self.router(x).float()
        scores = logits.sigmoid() if self.score_func == "sigmoid" else logits.softmax(dim=-1)
        idx = torch.topk(scores + self.routing_bias.float(), self.k, dim=-1).indices
        gates = scores.gather(1, idx)
        if self.score_func == "sigmoid":
            gates = gates / gates.sum(dim=-1, keepdim=True)
        return idx, gates * self.route_scale

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        idx, gates = self.route(x)
        flat = idx.flatten()
        counts = torch.bincount(flat, minlength=self.n_routed)
        if self.training:
            self._load = counts if self._load is None else self._load + counts
        order = torch.argsort(flat, stable=True)
        token = order // self.k
        gate = gates.flatten()[order]
        y = torch.zeros_like(x)
        start = 0
        # One host sync per layer; fine for a reference dispatch. An expert with no token still runs
        # on an empty slice, so its weights get a zero gradient instead of none (DDP needs no
        # find_unused_parameters, and optimizer state stays in step across experts).
        for e, c in enumerate(counts.tolist()):
            tok = token[start : start + c]
            out = self.experts[e](x.index_select(0, tok)) * gate[start : start + c, None].to(x.dtype)
            y.index_add_(0, tok, out.to(y.dtype))
            start += c
        if self.shared is not None:
            y = y + self.shared(x)
        return y.reshape(shape)

    @torch.no_grad()
    def update_routing_bias(self) -> None:
        """Aux-loss-free step from the load counted since the last call (summed over ranks)."""
        load = self.load.double()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(load)
        if load.sum() > 0 and self.rate > 0:
            self.routing_bias += (self.rate * torch.sign(load.mean() - load)).to(self.routing_bias.dtype)
        self._load = None
