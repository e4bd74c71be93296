"""LightningModule around the framework-free LM (mhc_repro.model.LM).

What lives here: the loss, AdamW with the model's parameter groups, warmup + the paper's step schedule,
the global grad norm (+ optional clipping), the non-finite-loss stop, the MoE routing-bias update after
each optimizer step, torchmetrics means of the loss, the FLOPs per batch for MFU, and the per-step
metric logging (step = optimizer step, 1..max_steps). Sharding/compile hooks are in ``configure_model``.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.aggregation import MeanMetric

from mhc_repro.config import ModelConfig
from mhc_repro.model.transformer import LM


class NonFiniteLossError(RuntimeError):
    """Raised (before the optimizer step) when the loss or the gradient norm is NaN/Inf."""


def split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    """Inputs and targets from a batch: a [B, T+1] token tensor, an (x, y) pair or a dict."""
    if isinstance(batch, dict):
        if "input_ids" in batch and "labels" in batch:
            return batch["input_ids"], batch["labels"]
        batch = batch.get("tokens", batch.get("input_ids"))
    if isinstance(batch, (tuple, list)):
        return batch[0], batch[1]
    return batch[:, :-1], batch[:, 1:]


def raise_recompile_limit(n_blocks: int) -> int:
    """Let every compiled block variant stay compiled: returns the recompile limit it set.

    block.compile() shares one code object (Block.forward) between all blocks, and Dynamo guards it
    per input layout and module state: the first block takes the embedding and expands it into the
    streams, the last one runs the collapse, dense and MoE blocks differ, validation runs without
    grad, and the Amax diagnostic flips each residual's ``capture`` flag. That is well over Dynamo's
    default of 8 variants per code object, past which the remaining ones silently run eager (the tiny
    preset asks for 9 in 4 steps with validation and Amax: reports/training/recompile_budget_tiny.txt).
    One variant per block and mode bounds them: blocks × (grad, no grad) × (capture off, on)."""
    import torch._dynamo.config as dynamo_config

    need = 4 * max(n_blocks, 2)
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, need)
    return dynamo_config.recompile_limit


def lr_factor(step: int, warmup: int, max_steps: int, milestones: list[float], factors: list[float]) -> float:
    """LR multiplier for optimizer step ``step`` (0-based): linear warmup to 1, then the step schedule."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    f = 1.0
    for m, fac in zip(milestones, factors):
        if step >= int(round(m * max_steps)):
            f = fac
    return f


def flops_per_token(cfg: ModelConfig, n_active: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 N_active (fwd + bwd matmuls, the head included) plus the attention
    score/value products 12 * blocks * heads * head_dim * seq_len (PaLM's formula, no causal discount).
    The HC/mHC coefficient work is left out (it is < 1% of the matmul FLOPs at n = 4)."""
    a = cfg.attention
    mla = a.kind == "mla"
    qk = a.head_dim + (a.rope_dim if mla else 0)
    v = a.v_dim if mla else a.head_dim  # v_head_dim is MLA only: MHA's values are head_dim wide
    attn = 6 * cfg.n_blocks * a.n_heads * (qk + v) * seq_len  # = 12 L H Q T when qk = v dim
    return 6.0 * n_active + attn


def all_ranks_finite(value: Tensor) -> bool:
    """True when ``value`` is finite on every rank: a rank that stopped alone would leave the others
    waiting in the next collective (the gradient all-reduce / reduce-scatter) until the timeout."""
    ok = torch.isfinite(value.detach()).all().to(torch.int32).reshape(1)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


class LMModule(L.LightningModule):
    """``config`` is the resolved run config dict (RunConfig.to_dict()); it is stored in the checkpoint's
    ``hyper_parameters["config"]`` so ``load_lm`` can rebuild the model without this class."""

    def __init__(self, config: dict) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.config = config
        self.train_cfg = config["train"]
        self.model_cfg = ModelConfig.from_dict(config["model"])
        torch.manual_seed(self.train_cfg["seed"])
        self.model = LM(self.model_cfg)
        counts = self.model.num_params()
        self.params_total, self.params_active = int(counts["total"]), int(counts["active"])
        seq = config["data"]["seq_len"]
        # per micro-batch per device (ThroughputMonitor multiplies by the world size itself)
        self.flops_per_batch = flops_per_token(self.model_cfg, self.params_active, seq) * seq * config["data"]["batch_size"]
        self.train_loss = MeanMetric()
        self._grad_norm: Optional[float] = None
        self._tokens_seen = 0  # restored from the checkpoint on resume
        self.last_train_loss: Optional[float] = None
        self.last_val_loss: Optional[float] = None
        self.last_perf: dict = {}

    # ---- model setup (strategy-aware) --------------------------------------------------------------
    def configure_model(self) -> None:
        """Compile blocks in place and, under ModelParallelStrategy, shard each block then the root (FSDP2)."""
        if getattr(self, "_configured", False):
            return
        self._configured = True
        if self.train_cfg["compile"]:
            raise_recompile_limit(len(self.model.blocks))
            # residual.recompute on MoE blocks: the expert-load counts the MoE keeps are a side effect
            # inside the traced checkpoint, which Dynamo refuses (the block would run eager) unless told
            # not to replay it in the recompute: counted once (mhc_repro/residual/recompute.py)
            import torch._dynamo.config as dynamo_config

            dynamo_config.skip_fwd_side_effects_in_bwd_under_checkpoint = True
            for block in self.model.blocks:
                block.compile()
        mesh = getattr(self, "device_mesh", None)
        if mesh is not None:
            from mhc_repro.training.fsdp import shard_lm

            shard_lm(self.model, mesh["data_parallel"], bf16=str(self.trainer.precision).startswith("bf16"))

    # ---- optimisation -----------------------------------------------------------------------------
    def configure_optimizers(self):
        t = self.train_cfg
        # fused AdamW unscales inside its step(), so Lightning would hand on_before_optimizer_step the
        # loss-scaled gradients of "16-mixed" (norm logged and clipped x the loss scale): not with a scaler
        fused = torch.cuda.is_available() and self.device.type == "cuda" and self._grad_scaler() is None
        opt = torch.optim.AdamW(self.model.param_groups(t["weight_decay"]), lr=t["lr"], betas=tuple(t["betas"]),
                                eps=t["eps"], fused=fused or None)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, t["warmup_steps"], t["max_steps"], t["lr_milestones"], t["lr_factors"]))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def _loss(self, batch: Any) -> tuple[Tensor, int]:
        x, y = split_batch(batch)
        logits = self.model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1))
        return loss, y.numel()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss, ntok = self._loss(batch)
        if not all_ranks_finite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()} on rank {self.global_rank}) at step {self.global_step + 1}: "
                "run stopped before the optimizer step; the last good checkpoint is kept (lower train.lr or "
                "enable train.grad_clip)")
        self.train_loss.update(loss.detach())
        self._tokens_seen += ntok * self.trainer.world_size
        self.log("loss", loss.detach(), prog_bar=True, logger=False)
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        """Global grad norm (one number, not per parameter), then clipping if enabled."""
        clip = self.train_cfg["grad_clip"]
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm=clip if clip > 0 else float("inf"), foreach=True)
        if hasattr(norm, "full_tensor"):  # DTensor under FSDP2
            norm = norm.full_tensor()
        # the norm is global (DDP: all-reduced grads; FSDP2: reduced over shards), so every rank
        # takes the same branch below
        self._grad_norm = float(norm)
        if not math.isfinite(self._grad_norm) and self._grad_scaler() is None:
            # (with "16-mixed" an overflow is routine: the GradScaler skips this step and lowers its scale)
            raise NonFiniteLossError(
                f"non-finite gradient norm ({self._grad_norm}) at step {self.global_step + 1}: run stopped before "
                "the optimizer step; the last good checkpoint is kept")

    def _grad_scaler(self):
        """The fp16 GradScaler of precision "16-mixed" (None for bf16 / fp32, or without a trainer)."""
        trainer = self._trainer
        return getattr(getattr(trainer, "precision_plugin", None), "scaler", None) if trainer is not None else None

    def after_optimizer_step(self) -> None:
        """Called by callbacks.StepEnd once per optimizer step, before that step's checkpoint."""
        step = self.global_step
        self.model.update_routing_bias()
        loss = float(self.train_loss.compute())
        self.train_loss.reset()
        self.last_train_loss = loss
        if step % self.train_cfg["log_every"] == 0 or step == self.train_cfg["max_steps"]:
            t = self.train_cfg  # the LR used by this step (Lightning already stepped the scheduler)
            lr = t["lr"] * lr_factor(step - 1, t["warmup_steps"], t["max_steps"], t["lr_milestones"], t["lr_factors"])
            self.log_step_metrics({
                "train/loss": loss, "train/ppl": math.exp(min(loss, 50.0)), "train/grad_norm": self._grad_norm,
                "train/lr": lr, "train/tokens": float(self._tokens_seen)})

    # ---- logging / state ----------------------------------------------------------------------------
    def log_step_metrics(self, metrics: dict[str, float]) -> None:
        """Log to every logger at step = optimizer step (rank 0 only; loggers ignore other ranks)."""
        if self.trainer.global_rank != 0:
            return
        for logger in self.trainer.loggers:
            logger.log_metrics(metrics, step=self.global_step)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["mhc_repro"] = {"tokens_seen": self._tokens_seen}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._tokens_seen = checkpoint.get("mhc_repro", {}).get("tokens_seen", 0)
        if self._trainer is not None:  # a resume of fit (not load_from_checkpoint)
            rescale_batch_progress(checkpoint, self.config["data"]["batch_size"] * self.trainer.world_size)


def rescale_batch_progress(checkpoint: dict, global_batch: int) -> None:
    """Convert the fit loop's micro-batch counters to this run's micro global batch (data.batch_size x
    world size), in place, when a run resumes on another number of processes (train.devices /
    train.num_nodes may change on resume).

    Lightning counts micro-batches per rank (``epoch_loop.batch_progress``) and decides where an
    accumulation ends by ``ready % accumulate_grad_batches``, and where the epoch ends by comparing it
    with the loader's length. Both are in units of the saved run's micro global batch: resumed on half
    the processes (twice the accumulation), a checkpoint at an odd step would make the first step after
    resume take half the global batch, and the epoch would end at the wrong place. The data position
    (the sampler's ``consumed`` samples) is exact either way; this makes the counters agree with it."""
    fit = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    loaders = (fit.get("state_dict") or {}).get("combined_loader") or []
    old = next((s["global_batch"] for s in loaders if isinstance(s, dict) and "global_batch" in s), None)
    progress = fit.get("epoch_loop.batch_progress")
    if not old or old == global_batch or not isinstance(progress, dict):
        return
    for part in ("current", "total"):
        counts = progress.get(part)
        if not isinstance(counts, dict) or not isinstance(counts.get("ready"), int):
            continue
        ready = counts["ready"]
        if part == "current" and (ready * old) % global_batch:  # "total" spans epochs: approximate is fine
            raise ValueError(f"cannot resume: the checkpoint's data position ({ready} micro-batches of {old} "
                             f"sequences) is not a whole number of micro-batches of {global_batch} sequences "
                             "(data.batch_size x world size); resume on a number of processes that divides it")
        new_ready = ready * old // global_batch
        for key, value in counts.items():  # started/processed/completed trail ready by 0 or 1 (in-flight batch)
            if isinstance(value, int):
                counts[key] = max(0, new_ready - (ready - value))
