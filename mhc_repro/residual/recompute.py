"""The paper's memory-saving recomputation for mHC (PAPER.md §5), as selective activation checkpointing.

"Discard mHC intermediates after forward, re-run only the mHC kernels in backward; store the stream
input once per block of L_r ≈ sqrt(nL/(n+2)) layers." Here the recompute unit is
``residual.recompute_blocks`` consecutive transformer blocks (one by default; "auto": the paper's L_r,
``paper_recompute_blocks``): ``checkpoint_block`` runs them under ``torch.utils.checkpoint`` (non-reentrant) with a
selective-activation-checkpoint (SAC) policy that

- saves (MUST_SAVE) the outputs of the expensive ops: dense matmuls (``mm``, ``addmm``, ``_scaled_mm``,
  ``_grouped_mm``, and ``bmm`` except the mHC stream mixes, see below), the attention kernels, and
  the fused mHC coefficient op ``mhc_repro.coefficients`` (projection + Sinkhorn; its outputs are
  O(n²) per token, tiny);
- recomputes (PREFER_RECOMPUTE) everything else, in particular the fused stream ops
  ``mhc_repro.pre`` (branch input) and ``mhc_repro.post_res`` (the n·C stream after each sub-layer),
  and everything cheap and elementwise around them (RMSNorm, RoPE, SwiGLU's activation, views).

So in backward the block is re-run with every matmul / attention / coefficient result taken from the
cache, and only the stream kernels and elementwise ops run again. What stays in memory per block: its
input stream (n·C per token, kept by the checkpoint as its argument; for the first block the
embedding, C per token, since ``expand_streams`` passes a broadcast view and copies of broadcasts are
recomputed in both modes), and the matmul / attention outputs; what is no longer stored: the middle
stream (output of the attention sub-layer's post_res, n·C per token), both pre outputs and the
norm/activation intermediates.

Why the policy is a *save list* rather than "recompute only pre / post_res": SAC caches the output of
every op it is told to save, views included, and a cached view of the middle stream (the reshapes
around the mHC ops are views) keeps the whole stream alive; caching elementwise outputs that autograd
would never have saved also costs memory. Recomputing all non-matmul ops avoids both.

Reference backend (pure PyTorch mHC ops): the same policy applies op by op. The reference stream ops
are einsums that lower to ``bmm`` with a contraction over the n streams; such bmm (contraction size
<= ``STREAM_MIX_MAX_K``) are recomputed, so the stream is not kept through them. Of the reference
coefficient path only its projection ``v @ phi`` (a ``mm``, output [N, n²+2n]) is saved; the RMS, the
sigmoids and the Sinkhorn iterations (all on O(n²) per-token tensors except the RMS, which reads the
stream once) are recomputed. Every other ``bmm`` (e.g. the MoE padded-bmm expert dispatch) is saved.

Side effects of a block's forward (the MoE's expert-load counts, kept on the module) run again in the
recompute. In eager mode "stream" re-runs their add, so the counts double, as under plain activation
checkpointing (the sign-based routing-bias update ignores it); "stream-ops" / "stream-post" keep the
add's output, so the recompute sets the same counts again. Compiled, the checkpoint is traced only
with Dynamo's ``skip_fwd_side_effects_in_bwd_under_checkpoint`` (set by the training module when it
compiles, as torchtitan does; without it the traced checkpoint fell back to eager): counted once. The
replay also needs a forward to run the same ops every time: the LM allocates the counts before its
blocks run (``MoE.zero_load``).

Framework-free: only torch.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

RECOMPUTE_MODES = ("none", "stream", "stream-ops", "stream-post")

# mode "stream-ops": only these are forced to be recomputed; the rest is left to the compiler.
STREAM_OPS = frozenset({"mhc_repro::pre", "mhc_repro::pre_norm", "mhc_repro::post_res",
                        "mhc_repro::post_res_linked",  # pre_norm: pre with the branch's RMSNorm fused in
                        "mhc_repro::post_res_proj_linked"})  # residual.proj_handoff's post op
# mode "stream-post": only the post ops, i.e. the block's middle stream (n·C per token) is re-run; the
# branch inputs (C per token each) are kept, so backward re-runs one stream kernel per block, not three.
POST_OPS = frozenset({"mhc_repro::post_res", "mhc_repro::post_res_linked", "mhc_repro::post_res_proj_linked"})

# A bmm whose contraction is this small is a stream mix (the reference mHC einsums contract over the n
# streams or none at all), not a model matmul: recompute it.
STREAM_MIX_MAX_K = 16

# Ops whose outputs are kept (by qualified name, so the custom op need not be registered to import this).
SAVE_OPS = frozenset({
    "aten::mm", "aten::addmm", "aten::_scaled_mm", "aten::_grouped_mm", "aten::_scaled_grouped_mm",
    "aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_cudnn_attention",
    "aten::_scaled_dot_product_fused_attention_overrideable",
    "aten::_flash_attention_forward", "aten::_efficient_attention_forward",
    "mhc_repro::coefficients",
})


def _op_name(func: Any) -> str:
    schema = getattr(func, "_schema", None)
    return schema.name if schema is not None else str(func)


def recompute_policy(ctx, func, *args, **kwargs) -> CheckpointPolicy:
    """SAC policy of ``recompute="stream"``: save matmuls, attention and the mHC coefficients; recompute
    the rest (the mHC stream ops ``pre`` / ``post_res`` among them)."""
    name = _op_name(func)
    if name in SAVE_OPS:
        return CheckpointPolicy.MUST_SAVE
    if name == "aten::bmm" and len(args) >= 2 and args[0].shape[-1] > STREAM_MIX_MAX_K:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


# Copies that materialize a broadcast (the first block's input: expand_streams' view of the embedding
# copied into n streams): recomputed under "stream-ops", so the block keeps the embedding, not n copies.
COPY_OPS = frozenset({"aten::clone", "aten::contiguous", "aten::_to_copy", "aten::copy"})


def _is_broadcast(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and t.dim() > 0 and any(
        st == 0 and sz > 1 for st, sz in zip(t.stride(), t.shape))


def _forced_recompute(forced: frozenset, func, args) -> CheckpointPolicy:
    # the ops in ``forced`` (and copies of broadcast views) re-run, the SAVE_OPS kept, the rest left
    # to the compiler's partitioner
    name = _op_name(func)
    if name in forced or (name in COPY_OPS and args and _is_broadcast(args[0])):
        return CheckpointPolicy.MUST_RECOMPUTE
    if name in SAVE_OPS:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_SAVE


def stream_ops_policy(ctx, func, *args, **kwargs) -> CheckpointPolicy:
    """SAC policy of ``recompute="stream-ops"`` (meant for torch.compile): the mHC stream ops (and a
    copy of a broadcast view, see COPY_OPS) must be re-run, matmuls / attention / coefficients must be
    saved, everything else is PREFER_SAVE, which under torch.compile leaves it to the partitioner (it
    keeps only what the backward needs, as without checkpointing). In eager mode PREFER_SAVE caches
    every output: there use "stream"."""
    return _forced_recompute(STREAM_OPS, func, args)


def stream_post_policy(ctx, func, *args, **kwargs) -> CheckpointPolicy:
    """SAC policy of ``recompute="stream-post"``: as "stream-ops" with only the post ops forced to be
    re-run (POST_OPS): less memory saved, one stream kernel re-run per block instead of three."""
    return _forced_recompute(POST_OPS, func, args)


POLICIES = {"stream": recompute_policy, "stream-ops": stream_ops_policy, "stream-post": stream_post_policy}


def mhc_recompute_context(mode: str = "stream") -> Callable[[], tuple]:
    """The ``context_fn`` for ``torch.utils.checkpoint.checkpoint`` that applies the policy of ``mode``."""
    return functools.partial(create_selective_checkpoint_contexts, POLICIES[mode])


def checkpoint_block(fn: Callable, *args, mode: str = "stream", **kwargs):
    """``fn(*args, **kwargs)`` under non-reentrant checkpointing with the mHC recompute policy of ``mode``."""
    return checkpoint(fn, *args, use_reentrant=False, context_fn=mhc_recompute_context(mode), **kwargs)


def paper_recompute_blocks(n_streams: int, n_blocks: int) -> int:
    """The paper's recompute unit in whole blocks: L_r ≈ sqrt(nL/(n+2)) sub-layers with L = 2·n_blocks
    (PAPER.md §5; a "layer" there is a sub-layer), halved and rounded half up, within [1, n_blocks]."""
    sub_layers = math.sqrt(n_streams * 2 * n_blocks / (n_streams + 2))
    return max(1, min(n_blocks, math.floor(sub_layers / 2 + 0.5)))


def recompute_unit_size(recompute_blocks: int | str, n_streams: int, n_blocks: int) -> int:
    """Blocks per recompute unit: ``recompute_blocks``, or for "auto" ``paper_recompute_blocks``."""
    return paper_recompute_blocks(n_streams, n_blocks) if recompute_blocks == "auto" else int(recompute_blocks)


def recompute_units(recompute_blocks: int | str, n_streams: int, n_blocks: int) -> list[range]:
    """The blocks of each recompute unit, in order: consecutive runs of ``recompute_unit_size`` blocks,
    the last one shorter where they do not divide n_blocks."""
    size = recompute_unit_size(recompute_blocks, n_streams, n_blocks)
    return [range(i, min(i + size, n_blocks)) for i in range(0, n_blocks, size)]
