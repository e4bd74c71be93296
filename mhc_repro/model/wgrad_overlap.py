"""Linear layers whose weight gradient runs on a side CUDA stream (an option; off by default).

In a linear layer's backward, dx = dy·W is on the critical path; dW = dyᵀ·x is not: nothing in the
step reads it until the optimizer. ``OverlapLinear`` forms dx on the current stream and dW on a
low-priority side stream, so that GEMM runs while the current stream's memory-bound kernels (mHC's
post/pre backward, the norms, which leave the tensor cores idle) go on. PAPER.md §5 hides mHC's
kernels behind compute through DualPipe and a high-priority stream; this is the single-GPU analogue,
a choice the paper leaves open.

Ordering. The current ("main") stream waits for the side stream once at the end of every backward
(an autograd-engine callback) and, through a parameter hook, before a gradient is accumulated into
an existing ``.grad``: every reader of a gradient sees it complete. Tensors the side stream uses are
``record_stream``-ed, so the caching allocator does not hand their memory out again too early.

For the overlap to help, the critical path needs a higher priority than the side stream: run the
step under ``on_stream(high_priority_stream(device))`` (the side stream has the lowest priority,
that of the default stream). Not for CUDA-graph capture. On CPU every op runs inline.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

_SIDE: dict[int, torch.cuda.Stream] = {}  # device index -> the low-priority side stream
_HIGH: dict[int, torch.cuda.Stream] = {}  # device index -> a high-priority stream for the step
_MAINS: list = []  # (main, side) pairs that launched side work since the last join


def side_stream(device) -> torch.cuda.Stream:
    idx = torch.device(device).index if torch.device(device).index is not None else torch.cuda.current_device()
    if idx not in _SIDE:
        _SIDE[idx] = torch.cuda.Stream(idx, priority=0)  # 0: the lowest priority CUDA has
    return _SIDE[idx]


def high_priority_stream(device) -> torch.cuda.Stream:
    idx = torch.device(device).index if torch.device(device).index is not None else torch.cuda.current_device()
    if idx not in _HIGH:
        _HIGH[idx] = torch.cuda.Stream(idx, priority=-1)  # lower number = higher priority
    return _HIGH[idx]


@contextlib.contextmanager
def on_stream(stream: torch.cuda.Stream):
    """Run the body on ``stream``, ordered after and before the current stream's work."""
    cur = torch.cuda.current_stream(stream.device)
    stream.wait_stream(cur)
    with torch.cuda.stream(stream):
        yield
    join()
    cur.wait_stream(stream)


def join() -> None:
    """Make every stream that launched side work wait for it (idempotent)."""
    for main, side in _MAINS:
        main.wait_stream(side)
    _MAINS.clear()


def _join_after_backward() -> None:
    # one callback per call (not per backward): a backward that raised leaves no stale state; the
    # first join of a backward clears _MAINS, the others find nothing to do
    try:  # possible only while the autograd engine runs a backward
        torch.autograd.Variable._execution_engine.queue_callback(join)
    except RuntimeError:
        join()


@torch.library.custom_op("mhc_repro::wgrad_side", mutates_args=())
def wgrad_side(dy: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """dW = dyᵀ·x over all leading dims, in w's dtype, formed on the side stream (CUDA)."""
    dy2, x2 = dy.reshape(-1, dy.shape[-1]), x.reshape(-1, x.shape[-1])
    if not dy.is_cuda:
        return torch.mm(dy2.t(), x2.to(dy2.dtype)).to(w.dtype)
    main, side = torch.cuda.current_stream(dy.device), side_stream(dy.device)
    dw = torch.empty_like(w, memory_format=torch.contiguous_format)  # on main: its readers are there
    side.wait_stream(main)
    with torch.cuda.stream(side):
        if dw.dtype == dy2.dtype:
            torch.mm(dy2.t(), x2, out=dw)
        else:
            dw.copy_(torch.mm(dy2.t(), x2, out_dtype=torch.float32) if dy2.dtype == torch.bfloat16
                     else torch.mm(dy2.t(), x2))
    for t in (dy, x, dw):
        t.record_stream(side)
    _MAINS.append((main, side))
    _join_after_backward()
    return dw


@wgrad_side.register_fake
def _(dy, x, w):
    return torch.empty_like(w, memory_format=torch.contiguous_format)


class _OverlapLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(x, w):
        return F.linear(x, w)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        dx = dy @ w if ctx.needs_input_grad[0] else None  # critical path: stays in the traced graph
        dw = wgrad_side(dy, x, w) if ctx.needs_input_grad[1] else None
        return dx, dw


def _join_before_accumulate(param: nn.Parameter):
    def hook(grad):
        if param.grad is not None:  # accumulation reads the new gradient on the main stream
            join()
        return grad

    return hook


class OverlapLinear(nn.Linear):
    """nn.Linear whose weight gradient is formed on the side stream (module docstring)."""

    def forward(self, x):
        y = _OverlapLinearFn.apply(x, self.weight)
        return y if self.bias is None else y + self.bias


def use_overlap_linears(module: nn.Module) -> nn.Module:
    """Turn every plain nn.Linear under ``module`` into an OverlapLinear, in place (same parameters)."""
    for m in module.modules():
        if type(m) is nn.Linear:
            m.__class__ = OverlapLinear
            m.weight.register_hook(_join_before_accumulate(m.weight))
    return module
