"""FSDP2 over all ranks: Lightning's ModelParallelStrategy with a pure data-parallel device mesh.

Lightning resolves ``data_parallel_size="auto"`` to the number of *nodes* (it assumes tensor parallelism
fills each node), so ``tensor_parallel_size=1`` on 8 GPUs would fail its mesh check (1 x 1 != 8). Here the
data-parallel size is the world size, known once the process group exists; ``LMModule.configure_model``
shards each block and then the root with ``fully_shard`` over the ``data_parallel`` mesh dimension.
"""

from __future__ import annotations

from lightning.pytorch.strategies import ModelParallelStrategy


class FSDP2Strategy(ModelParallelStrategy):
    """ModelParallelStrategy with mesh (world_size, 1): FSDP2 over every rank, no tensor parallelism.
    Checkpoints are sharded directories (``step*.ckpt/``, torch.distributed.checkpoint format plus
    Lightning's ``meta.pt``); ``mhc_repro.training.checkpoint`` reads them without a process group."""

    def __init__(self, **kwargs) -> None:
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, **kwargs)

    def _setup_distributed(self) -> None:
        super()._setup_distributed()
        self._data_parallel_size = self.world_size  # before setup_environment builds the mesh
