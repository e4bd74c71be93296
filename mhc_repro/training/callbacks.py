"""Training callbacks. Order matters and is fixed in run.py: perf -> step-end (routing bias, train
metrics, validation, Amax) -> checkpoint, so everything of step k is logged before step k's checkpoint
exists: a run killed after that checkpoint resumes at k+1 with no gap in the MLflow history.

Validation runs here on fixed held-out batches (not in Lightning's validation loop, which runs *after*
the checkpoint hook and would leave a gap at a killed checkpoint step).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Optional

import lightning as L
import torch
from lightning.pytorch.callbacks import ThroughputMonitor

from mhc_repro.training.module import NonFiniteLossError, split_batch

CKPT_RE = re.compile(r"^step(\d{7})(-exception)?\.ckpt$")


def _step_done(trainer: L.Trainer, last: int) -> bool:
    return trainer.global_step != last and trainer.global_step > 0


# Dense (not 2:4-sparse) bf16 tensor-core peaks from the vendors' datasheets, per GPU.
DENSE_BF16_FLOPS = {"h200": 989.4e12, "h100": 989.4e12, "a100": 312e12}


def dense_peak_flops(device: torch.device, precision: str) -> Optional[float]:
    """Dense bf16 peak of a known CUDA GPU when training in bf16; None otherwise (Lightning's value stays)."""
    if device.type != "cuda" or "bf16" not in precision:
        return None
    name = torch.cuda.get_device_name(device).lower()
    return next((v for k, v in DENSE_BF16_FLOPS.items() if k in name), None)


class PerfMonitor(ThroughputMonitor):
    """Lightning's ThroughputMonitor (tokens/s and MFU from ``flops_per_batch``), logged as
    ``perf/tokens_per_sec`` and ``perf/mfu`` at step = optimizer step."""

    def __init__(self, window: int) -> None:
        super().__init__(batch_size_fn=lambda b: split_batch(b)[0].size(0),
                         length_fn=lambda b: split_batch(b)[0].numel(), window_size=window)

    def setup(self, trainer: L.Trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        dense = dense_peak_flops(trainer.strategy.root_device, str(trainer.precision))
        if dense is not None and dense != self.available_flops:
            # Lightning 2.6 does not recognise "NVIDIA H200" and lists H200 bf16 at the sparse 2.0e15
            self.available_flops = dense
            for tp in self._throughputs.values():
                tp.available_flops = dense

    def _compute(self, trainer: L.Trainer, iter_num: Optional[int] = None) -> None:
        if trainer.state.stage is None or trainer.state.stage.value != "train":
            return
        m = self._throughputs[trainer.state.stage].compute()
        out = {}
        tok = m.get("items_per_sec", m.get("device/items_per_sec"))
        if tok is not None:
            out["perf/tokens_per_sec"] = float(tok)
        if "device/mfu" in m:
            out["perf/mfu"] = float(m["device/mfu"])
        if out:
            trainer.lightning_module.last_perf = out
            for logger in trainer.loggers:
                logger.log_metrics(out, step=trainer.global_step)


class StepEnd(L.Callback):
    """After each optimizer step: MoE routing bias, train metrics, periodic validation and Amax."""

    def __init__(self, val_every: int, val_batches: int, amax_every: int, diag_dir: Path) -> None:
        self.val_every, self.val_batches, self.amax_every = val_every, val_batches, amax_every
        self.diag_dir = diag_dir
        self._last = -1
        self._val: Optional[list] = None
        self.micro_since_step = 0  # micro-batches started since the last optimizer step

    def _val_data(self, trainer: L.Trainer) -> list:
        if self._val is None:
            self._val = []
            loader = trainer.datamodule.val_dataloader() if trainer.datamodule is not None else []
            for i, batch in enumerate(loader):
                if i >= self.val_batches:
                    break
                self._val.append(batch)
        return self._val

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.micro_since_step += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not _step_done(trainer, self._last):
            return
        self._last = step = trainer.global_step
        self.micro_since_step = 0
        pl_module.after_optimizer_step()
        max_steps = trainer.max_steps
        if self.val_every and (step % self.val_every == 0 or step == max_steps):  # 0: never
            self.validate(trainer, pl_module)
        if self.amax_every and (step % self.amax_every == 0 or step == max_steps):
            self.amax(trainer, pl_module)

    @torch.no_grad()
    def validate(self, trainer: L.Trainer, pl_module) -> Optional[float]:
        batches = self._val_data(trainer)
        if not batches:
            return None
        was_training = pl_module.training
        pl_module.eval()
        losses = []
        with trainer.precision_plugin.forward_context():
            for batch in batches:
                batch = pl_module.transfer_batch_to_device(batch, pl_module.device, 0)
                losses.append(pl_module._loss(batch)[0].float())
        pl_module.train(was_training)
        loss = float(torch.stack(losses).mean())
        pl_module.last_val_loss = loss
        pl_module.log_step_metrics({"val/loss": loss, "val/ppl": math.exp(min(loss, 50.0))})
        return loss

    @torch.no_grad()
    def amax(self, trainer: L.Trainer, pl_module) -> Optional[dict]:
        """Amax gains (PAPER.md §2) of the H_res matrices on the first validation batch."""
        from mhc_repro.diagnostics.amax import amax_gains, plot_amax

        batches = self._val_data(trainer)
        if not batches:
            return None
        x, _ = split_batch(pl_module.transfer_batch_to_device(batches[0], pl_module.device, 0))
        model = pl_module.model
        was_training = model.training
        model.eval()
        with trainer.precision_plugin.forward_context(), model.capture_diagnostics():
            model(x)
        model.train(was_training)
        res = amax_gains(model.residual_matrices())
        if trainer.global_rank != 0:
            return res
        step = trainer.global_step
        pl_module.log_step_metrics({f"amax/{k}": float(res[k]) for k in (
            "fwd_single_max", "bwd_single_max", "fwd_composite_max", "bwd_composite_max", "log_colsum_max")})
        self.diag_dir.mkdir(parents=True, exist_ok=True)
        stem = self.diag_dir / f"amax_step{step:07d}"
        payload = {"step": step, **{k: res[k] for k in (
            "fwd_single", "bwd_single", "fwd_composite", "bwd_composite", "log_colsum_single")},
            "reduce": res["reduce"], "n": res["n"]}
        stem.with_suffix(".json").write_text(json.dumps(payload, indent=1))
        plot_amax(res, str(stem.with_suffix(".png")), title=f"Amax, {pl_module.config['train']['variant']}, step {step}")
        for logger in trainer.loggers:
            if hasattr(logger, "log_artifact"):
                logger.log_artifact(str(stem.with_suffix(".json")), "diagnostics")
                logger.log_artifact(str(stem.with_suffix(".png")), "diagnostics")
        return res


class StepCheckpoint(L.Callback):
    """``checkpoints/step{k:07d}.ckpt`` every ``every`` steps and at the last step (keeps the newest
    ``keep``), and ``step{k:07d}-exception.ckpt`` on an exception other than a non-finite loss, when the
    state is at an optimizer-step boundary (the partial gradients of an interrupted accumulation are not
    saved, so resuming from a mid-accumulation state could not be exact: the last periodic one is kept);
    exception checkpoints only in single-process runs. Under FSDP2 a checkpoint is a directory of shards."""

    def __init__(self, ckpt_dir: Path, every: int, step_end: StepEnd, keep: int = 1) -> None:
        self.dir, self.every, self.keep, self.step_end = ckpt_dir, every, keep, step_end
        self._last = -1
        self.last_path: Optional[Path] = None
        self._rewind_batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not _step_done(trainer, self._last):
            return
        self._last = step = trainer.global_step
        if step % self.every == 0 or step == trainer.max_steps:
            self._save(trainer, self.dir / f"step{step:07d}.ckpt")

    def _save(self, trainer: L.Trainer, path: Path) -> None:
        trainer.save_checkpoint(str(path))
        self.last_path = path
        if trainer.global_rank == 0:
            olds = sorted(p for p in self.dir.glob("step*.ckpt") if p != path)
            for old in olds[:max(0, len(olds) - (self.keep - 1))]:
                shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
            for logger in trainer.loggers:
                if hasattr(logger, "set_tag"):
                    logger.set_tag("checkpoint_path", str(path))

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        step = trainer.global_step
        if isinstance(exception, NonFiniteLossError) or step == 0 or self._saved_step() >= step:
            return
        if trainer.world_size > 1:
            # the exception may have hit this rank alone; saving is a collective (FSDP2) or ends in a
            # barrier (DDP) that the other ranks would never join: resume from the last periodic one
            return
        started = self.step_end.micro_since_step
        if started > 1:  # mid-accumulation: not resumable exactly
            return
        self._rewind_batches = started  # the batch that failed was handed out but not trained on
        try:
            self._save(trainer, self.dir / f"step{step:07d}-exception.ckpt")
        finally:
            self._rewind_batches = 0

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if not self._rewind_batches:
            return
        states = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader", [])
        for st in states:
            if isinstance(st, dict) and "consumed" in st and "global_batch" in st:
                st["consumed"] = max(0, st["consumed"] - self._rewind_batches * st["global_batch"])

    def _saved_step(self) -> int:
        m = CKPT_RE.match(self.last_path.name) if self.last_path else None
        return int(m.group(1)) if m else -1


def latest_checkpoint(ckpt_dir: Path) -> Optional[Path]:
    """Newest resumable checkpoint by step (a periodic one wins a tie with an exception one)."""
    best: Optional[tuple[int, int, Path]] = None
    for p in ckpt_dir.glob("step*.ckpt") if ckpt_dir.is_dir() else []:
        m = CKPT_RE.match(p.name)
        # a sharded (FSDP2) checkpoint directory is complete once rank 0 has written meta.pt after the shards
        if m and (p.is_file() or (p / "meta.pt").is_file()):
            key = (int(m.group(1)), 0 if m.group(2) else 1, p)
            best = key if best is None or key[:2] > best[:2] else best
    return best[2] if best else None


__all__ = ["PerfMonitor", "StepEnd", "StepCheckpoint", "latest_checkpoint"]
