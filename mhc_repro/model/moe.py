"""DeepSeek-V3 style mixture of experts with auxiliary-loss-free load balancing.

Routing (per token): scores s = sigmoid(x W_r) (or softmax); the top-k experts are *selected* by
s + b (b = per-expert routing bias, a buffer), while the *gates* come from the unbiased scores of the
selected experts, normalised to sum to 1 (sigmoid) and multiplied by ``route_scale``.
Balancing: each training forward adds the number of tokens routed to every expert to ``load``;
``update_routing_bias()`` (called by the trainer after an optimizer step, outside autograd) does
``b += rate * sign(mean(load) - load)`` and clears ``load``. Over-loaded experts get a lower bias.
Shared experts are one SwiGLU of width n_shared * expert_width (same function as separate experts).

Dispatch (exact, no capacity drop): the (token, expert) assignments are sorted by expert, the tokens
gathered, all routed experts run as one batched computation over weights stacked [E, ., .], and the
results summed back weighted by the gates, in fp32 whatever the stream's dtype (a bf16 stream's token
is rounded once, not after each of its k expert outputs); ``MoEConfig.shuffle`` picks scatter-adds or
gathers for these moves (``moe_shuffle``). ``MoEConfig.dispatch`` picks the batched kernel:
``"grouped"`` (``torch._grouped_mm`` over the jagged groups, no host sync; bf16 on CUDA), ``"bmm"``
(groups padded to the largest one, one host sync per layer) or ``"loop"`` (one matmul group per
expert; the reference). ``"auto"`` = grouped on CUDA (sm90+) in bf16, else bmm.
"""

from __future__ import annotations

import math
import warnings
from typing import Iterator, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mhc_repro.config import ModelConfig

from . import moe_shuffle
from .ffn import SwiGLU


class StackedLinear(nn.Linear):
    """``n`` independent bias-free linear maps in one weight [n, out_features, in_features].

    A subclass of nn.Linear only so that code treating every linear alike applies to it too:
    ``LM.reset_parameters`` (N(0, init_std); a ``down_proj`` is scaled as an output projection) and
    the meta-device parameter count (which skips nn.Linear's default init). Not callable as a Linear.
    """

    def __init__(self, n: int, in_features: int, out_features: int) -> None:
        nn.Module.__init__(self)
        self.n, self.in_features, self.out_features = n, in_features, out_features
        self.weight = nn.Parameter(torch.empty(n, out_features, in_features))
        self.register_parameter("bias", None)
        self.reset_parameters()  # nn.Linear's: kaiming-uniform with fan_in = out * in; see below

    def reset_parameters(self) -> None:
        # as nn.Linear per expert (bound 1/sqrt(in)); LM.reset_parameters replaces it anyway
        if not self.weight.is_meta:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        raise TypeError("StackedLinear holds weights only; ExpertBank runs them")

    def extra_repr(self) -> str:
        return f"n={self.n}, in_features={self.in_features}, out_features={self.out_features}, bias=False"


class _ExpertView:
    """Expert ``e`` of an ExpertBank as a SwiGLU function of views of the stacked weights (for the
    loop dispatch, dense references and per-expert parameter counting). Not a module: its
    ``parameters()`` are views, which optimisers must never see."""

    def __init__(self, bank: "ExpertBank", e: int) -> None:
        self.bank, self.e = bank, e

    def weights(self) -> tuple[Tensor, Tensor, Tensor]:
        b = self.bank
        return b.gate_proj.weight[self.e], b.up_proj.weight[self.e], b.down_proj.weight[self.e]

    def parameters(self) -> Iterator[Tensor]:
        return iter(self.weights())

    def __call__(self, x: Tensor) -> Tensor:
        g, u, d = self.weights()
        return F.linear(F.silu(F.linear(x, g)) * F.linear(x, u), d)


class ExpertBank(nn.Module):
    """``n`` routed SwiGLU experts ``down(silu(gate(x)) * up(x))`` with stacked weights
    gate_proj/up_proj [n, width, C] and down_proj [n, C, width]; ``bank[e]`` is expert e."""

    def __init__(self, n: int, d_model: int, width: int) -> None:
        super().__init__()
        self.n = n
        self.gate_proj = StackedLinear(n, d_model, width)
        self.up_proj = StackedLinear(n, d_model, width)
        self.down_proj = StackedLinear(n, width, d_model)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, e: int) -> _ExpertView:
        if not -self.n <= e < self.n:
            raise IndexError(f"expert index {e} out of range for {self.n} experts")
        return _ExpertView(self, e % self.n)

    # Each method below maps xs [M, C] (rows sorted by expert, counts[e] rows for expert e) to [M, C].
    def run_loop(self, xs: Tensor, counts: Tensor) -> Tensor:
        # One host sync (the split sizes). An expert with no token runs on an empty slice. Weights are
        # unbound once: indexing them per expert would build n full-size zero gradients in backward.
        ws = zip(*(p.weight.unbind(0) for p in (self.gate_proj, self.up_proj, self.down_proj)))
        return torch.cat([F.linear(F.silu(F.linear(part, g)) * F.linear(part, u), d)
                          for (g, u, d), part in zip(ws, xs.split(counts.tolist()))])

    def run_bmm(self, xs: Tensor, counts: Tensor) -> Tensor:
        # Pad every group to the largest (one host sync for its size), then three torch.bmm calls.
        n, m = self.n, xs.shape[0]
        cap = int(counts.max()) if m > 0 else 0
        expert = torch.repeat_interleave(torch.arange(n, device=xs.device), counts, output_size=m)
        start = torch.cumsum(counts, 0) - counts
        slot = expert * cap + torch.arange(m, device=xs.device) - start[expert]
        buf = xs.new_zeros(n * cap, xs.shape[1]).index_copy(0, slot, xs).view(n, cap, xs.shape[1])
        wg, wu, wd = self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight
        h = F.silu(torch.bmm(buf, wg.transpose(1, 2))) * torch.bmm(buf, wu.transpose(1, 2))
        out = torch.bmm(h, wd.transpose(1, 2))
        return out.reshape(n * cap, xs.shape[1]).index_select(0, slot)

    def run_grouped(self, xs: Tensor, counts: Tensor, dtype: torch.dtype, align: int = 8) -> Tensor:
        # Jagged groups delimited by int32 end offsets, operands cast to `dtype` (the CUDA kernel wants
        # bf16), weights as column-major [n, in, out] views. Each group is zero-padded to a multiple of
        # `align` rows (16-byte TMA alignment of group starts in bf16) and to at least `align` rows: an
        # empty group is a K=0 problem in the weight-gradient GEMM, which hung CUTLASS (pytorch#152668).
        # The buffer size has a static bound (no host sync); the last group takes the slack, so every
        # row is defined. Zero rows add nothing to outputs or gradients: the result is exact.
        n, m = self.n, xs.shape[0]
        padded = (counts.clamp(min=1) + align - 1) // align * align
        ends = torch.cumsum(padded, 0)
        start = ends - padded
        total = m + n * align  # >= ends[-1]: a group of c rows grows by < align, an empty one by align
        ends = torch.cat([ends[:-1], ends.new_full((1,), total)])  # the last group ends at total
        expert = torch.repeat_interleave(torch.arange(n, device=xs.device), counts, output_size=m)
        slot = start[expert] + torch.arange(m, device=xs.device) - (torch.cumsum(counts, 0) - counts)[expert]
        buf = xs.new_zeros(total, xs.shape[1], dtype=dtype).index_copy(0, slot, xs.to(dtype))
        offs = ends.to(torch.int32)
        wg, wu, wd = (p.weight.to(dtype).transpose(1, 2) for p in (self.gate_proj, self.up_proj, self.down_proj))
        h = F.silu(torch._grouped_mm(buf, wg, offs=offs)) * torch._grouped_mm(buf, wu, offs=offs)
        return torch._grouped_mm(h, wd, offs=offs).index_select(0, slot)


def _compute_dtype(x: Tensor, weight: Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return torch.promote_types(x.dtype, weight.dtype)


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        m = cfg.moe
        self.n_routed, self.k = m.n_routed, m.n_active_routed
        self.score_func, self.route_scale, self.rate = m.score_func, m.route_scale, m.bias_update_rate
        self.dispatch, self.shuffle = m.dispatch, m.shuffle
        self.router = nn.Linear(cfg.d_model, m.n_routed, bias=False)
        self.experts = ExpertBank(m.n_routed, cfg.d_model, m.expert_width)
        self.shared = SwiGLU(cfg.d_model, m.n_shared * m.expert_width) if m.n_shared > 0 else None
        # the bias is model state (a checkpointed buffer, never optimised)
        self.register_buffer("routing_bias", torch.zeros(m.n_routed))
        # Load counted since the last update: a plain int64 attribute, not a buffer, so that DDP's
        # buffer broadcast cannot overwrite a rank's own counts and model.to(bf16) cannot round them.
        # The LM allocates it before its blocks run (``zero_load``), so that every training forward runs
        # the same ops, an add, whatever was counted before: selective recompute (residual.recompute)
        # replays a forward's ops against the first run's, and Dynamo keeps one graph.
        self._load: Optional[Tensor] = None
        self._grouped_failed = False  # set once torch._grouped_mm raised: use bmm from then on

    @property
    def load(self) -> Tensor:
        """Tokens routed to each expert by training forwards since the last ``update_routing_bias()``."""
        if self._load is None:
            return torch.zeros(self.n_routed, dtype=torch.long, device=self.routing_bias.device)
        return self._load

    def zero_load(self) -> None:
        """Allocates the load counts (zeros) if they are not: called outside the blocks' forwards."""
        if self._load is None:
            self._load = torch.zeros(self.n_routed, dtype=torch.long, device=self.routing_bias.device)

    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Expert indices [N, k] (long) and gates [N, k] (fp32) for tokens x [N, C]."""
        logits = self.router(x).float()
        scores = logits.sigmoid() if self.score_func == "sigmoid" else logits.softmax(dim=-1)
        idx = torch.topk(scores + self.routing_bias.float(), self.k, dim=-1).indices
        gates = scores.gather(1, idx)
        if self.score_func == "sigmoid":
            gates = gates / gates.sum(dim=-1, keepdim=True)
        return idx, gates * self.route_scale

    def _run_experts(self, xs: Tensor, counts: Tensor) -> Tensor:
        mode = self.dispatch
        dtype = _compute_dtype(xs, self.experts.gate_proj.weight)
        if mode == "auto":
            # the CUTLASS grouped kernel is for sm90+; elsewhere torch loops over the groups
            grouped_ok = (xs.is_cuda and dtype == torch.bfloat16 and hasattr(torch, "_grouped_mm")
                          and torch.cuda.get_device_capability(xs.device) >= (9, 0))
            mode = "grouped" if grouped_ok else "bmm"
        if mode == "grouped" and not self._grouped_failed:
            try:
                return self.experts.run_grouped(xs, counts, dtype)
            except torch.OutOfMemoryError:
                raise  # not a kernel limitation (and bmm's padding needs more memory)
            except (RuntimeError, TypeError, AttributeError, NotImplementedError) as err:
                # unsupported device/dtype/layout or an older torch: the padded bmm computes the same
                self._grouped_failed = True
                warnings.warn(f"MoE grouped dispatch unavailable ({type(err).__name__}: {err}); "
                              "using the padded bmm dispatch", RuntimeWarning, stacklevel=3)
        if mode == "loop":
            return self.experts.run_loop(xs, counts)
        return self.experts.run_bmm(xs, counts)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        idx, gates = self.route(x)
        flat = idx.flatten()
        # = bincount, which on CUDA reads max(flat) back to the host; index_add needs no sync. Out of
        # place, as every op here: selective recompute (residual.recompute) caches op outputs and
        # refuses one that is mutated afterwards
        counts = flat.new_zeros(self.n_routed).index_add(0, flat, torch.ones_like(flat))
        if self.training:
            self._load = counts if self._load is None else self._load + counts
        order = torch.argsort(flat, stable=True)  # assignments grouped by expert, tokens in order
        inv = moe_shuffle.inverse(order) if self.shuffle == "gather" else None
        out = self._run_experts(moe_shuffle.to_experts(x, order, inv, self.k, self.shuffle), counts)
        y = moe_shuffle.from_experts(out, order, inv, gates, self.k, x.dtype, self.shuffle)
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
