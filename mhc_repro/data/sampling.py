"""Deterministic, resumable order of training samples.

Epoch e visits a permutation of the packed samples drawn from seed (seed, e). The permutation is cut
into global batches of batch_size * world_size; rank r takes the r-th slice of each, so the global
order does not depend on how many processes read it. `ResumableLoader` counts the batches it has
handed out and exposes state_dict()/load_state_dict(); Lightning 2.6 stores that state in the
checkpoint (fit_loop "combined_loader") and reloads it before the first iter() on resume, so training
continues exactly where it stopped: no repeated, no skipped batches. Lightning does not prefetch from
loaders with a length, so "handed out" equals "trained on" when a checkpoint is written.

Multi-process training must pass Trainer(use_distributed_sampler=False): this sampler already shards.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class ResumableSampler(Sampler[int]):
    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 step_batch: Optional[int] = None):
        """step_batch: sequences per optimizer step (the global batch of a gradient accumulation; None =
        batch_size x world_size): an epoch is a whole number of optimizer steps, so no step at an epoch's
        end averages fewer micro-batches than the others."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, world_size={world_size})")
        if step_batch is not None and (step_batch < 1 or step_batch % (batch_size * world_size)):
            raise ValueError(f"step_batch={step_batch} is not a positive multiple of batch_size x world_size "
                             f"= {batch_size * world_size}")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.step_batch = step_batch or batch_size * world_size
        self.epoch = 0
        self.consumed = 0  # global samples (all ranks) already handed out in this epoch

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def samples_per_epoch(self) -> int:
        """Global samples used per epoch (the ragged tail that fills no optimizer step is dropped)."""
        return self.num_samples // self.step_batch * self.step_batch

    def __len__(self) -> int:  # this rank's samples in a full epoch (Lightning sizes the epoch by it)
        return self.samples_per_epoch // self.world_size

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at each epoch start; a new epoch restarts the position at 0."""
        if epoch != self.epoch:
            self.epoch, self.consumed = epoch, 0

    def permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.num_samples, generator=g)[: self.samples_per_epoch]

    def __iter__(self) -> Iterator[int]:
        if self.consumed >= self.samples_per_epoch > 0:  # previous epoch finished without set_epoch
            self.epoch, self.consumed = self.epoch + 1, 0
        perm = self.permutation(self.epoch).view(-1, self.world_size, self.batch_size)
        start = self.consumed // self.global_batch
        for batch in perm[start:, self.rank]:  # batch by batch: no Python list of the whole epoch
            yield from batch.tolist()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed,
                "num_samples": self.num_samples, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed or state["num_samples"] != self.num_samples:
            raise ValueError(f"data loader state is for seed={state['seed']}, {state['num_samples']} samples; "
                             f"this run has seed={self.seed}, {self.num_samples} samples (different data?)")
        if state["consumed"] % self.global_batch:
            raise ValueError(f"resume position {state['consumed']} is not a multiple of the global batch "
                             f"{self.global_batch}; keep batch_size * world_size dividing it")
        self.epoch, self.consumed = state["epoch"], state["consumed"]
        if self.consumed >= self.samples_per_epoch:  # saved at the very end of an epoch
            self.epoch, self.consumed = self.epoch + 1, 0


class ResumableLoader(DataLoader):
    """DataLoader over a ResumableSampler that records how many batches it has yielded."""

    def __init__(self, dataset: Dataset, sampler: ResumableSampler, **kwargs: Any):
        super().__init__(dataset, batch_size=sampler.batch_size, sampler=sampler, drop_last=True,
                         shuffle=False, **kwargs)

    def __iter__(self) -> Iterator[Any]:
        # A generator: nothing (not even the sampler's permutation) starts until the first next(),
        # i.e. after Lightning has called set_epoch / load_state_dict.
        sampler: ResumableSampler = self.sampler
        for batch in super().__iter__():
            sampler.consumed += sampler.global_batch
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)
