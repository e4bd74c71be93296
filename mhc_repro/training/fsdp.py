"""FSDP2 over all ranks: Lightning's ModelParallelStrategy with a pure data-parallel device mesh.

Lightning resolves ``data_parallel_size="auto"`` to the number of *nodes* (it assumes tensor parallelism
fills each node), so ``tensor_parallel_size=1`` on 8 GPUs would fail its mesh check (1 x 1 != 8). Here the
data-parallel size is the world size, known once the process group exists; ``LMModule.configure_model``
shards each block and then the root with ``fully_shard`` over the ``data_parallel`` mesh dimension.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn


def shard_lm(model: nn.Module, mesh, bf16: bool) -> None:
    """FSDP2 (``fully_shard``) on an ``LM``: each block, then the root, over ``mesh``.

    bf16 (bf16-mixed): the blocks and the root compute with bf16 parameters (fp32 gradient reduction).
    The residual stream keeps the dtype ``residual.stream_dtype`` gives it in ``LM.forward``, as on one
    device: the block inputs are not cast (``cast_forward_inputs=False``; FSDP2 would otherwise turn
    every block's input stream, and the RoPE tables, into bf16 whatever ``stream_dtype`` says), and
    the embedding is its own unit with fp32 parameters, so ``stream_dtype="auto"`` is the fp32
    embedding output that bf16-mixed autocast gives on one device. Each HC/mHC residual module is its own
    fp32 unit too (two small all-gathers per block; one unit for both with ``residual.proj_handoff``,
    whose attention sub-layer reads the FFN sub-layer's φ), so its coefficients are computed from fp32
    parameters as on one device (PAPER.md §1: fp32 coefficients, φ in tf32/fp32, which the kernels'
    bf16x2 split of φ matches)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from mhc_repro.training.config import fsdp_recompute_error

    err = fsdp_recompute_error(model.cfg, bf16)
    if err:
        raise ValueError(err)
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False)
          if bf16 else MixedPrecisionPolicy())
    fp32 = MixedPrecisionPolicy(reduce_dtype=torch.float32, cast_forward_inputs=False)
    if bf16:
        fully_shard(model.embed, mesh=mesh, mp_policy=fp32)
    for block in model.blocks:
        if bf16:  # HC/mHC coefficients in fp32 (φ, α, b; the bf16x2 split of φ), as on one device
            units = [r for r in (block.attn_residual, block.ffn_residual)
                     if any(True for _ in r.parameters(recurse=False))]
            if block.proj_handoff:  # the attention sub-layer reads the FFN's φ: one unit for both
                units = [units]
            for res in units:
                fully_shard(res, mesh=mesh, mp_policy=fp32)
        fully_shard(block, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)


class FSDP2Strategy(ModelParallelStrategy):
    """ModelParallelStrategy with mesh (world_size, 1): FSDP2 over every rank, no tensor parallelism.
    Checkpoints are sharded directories (``step*.ckpt/``, torch.distributed.checkpoint format plus
    Lightning's ``meta.pt``); ``mhc_repro.training.checkpoint`` reads them without a process group."""

    def __init__(self, grad_sync: str = "micro_step", **kwargs) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, **kwargs)
        self.grad_sync = grad_sync  # TrainConfig.fsdp_grad_sync

    @contextmanager
    def block_backward_sync(self):
        """Lightning enters this around every micro-batch but the last of an accumulation (it is DDP's
        no_sync there). grad_sync "step": FSDP2 keeps those micro-batches' gradients unsharded and
        reduce-scatters their sum with the last one's; "micro_step": nothing changes (FSDP2's default)."""
        roots = [m for m in self.lightning_module.modules() if hasattr(m, "set_requires_gradient_sync")]
        if self.grad_sync != "step" or not roots:
            yield None
            return
        roots[0].set_requires_gradient_sync(False)  # the outermost FSDP2 module; recurses into every unit
        try:
            yield None
        finally:
            roots[0].set_requires_gradient_sync(True)

    def _setup_distributed(self) -> None:
        super()._setup_distributed()
        self._data_parallel_size = self.world_size  # before setup_environment builds the mesh
