"""Training-throughput measurement: the real LightningModule + callbacks on synthetic tokens, no MLflow
and no data pipeline (so it runs on GPU images that lack mlflow/datasets). For each variant: train
``--steps`` optimizer steps and report tokens/s and MFU over the steps after ``--warmup``, ThroughputMonitor's
own MFU, peak GPU memory, loss, and the Amax summary of the last step.

    python -m mhc_repro.training.bench --config experiments/3b/base.yaml --variants residual hc mhc \
        --steps 50 --micro-batch 4 --seq-len 4096 --out reports/training/h200_3b.json

``--profile-steps K`` runs K more steps under torch.profiler after the timed ones and reports where
their GPU time goes by kernel category (mhc_repro.diagnostics.kernel_profile).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from mhc_repro.training.callbacks import PerfMonitor, StepEnd, dense_peak_flops
from mhc_repro.training.compose import build_config
from mhc_repro.training.module import LMModule, flops_per_token


class RandomTokens(Dataset):
    """Deterministic uniform random token sequences of seq_len + 1 -> (inputs, targets)."""

    def __init__(self, n: int, seq_len: int, vocab: int, seed: int) -> None:
        self.n, self.seq_len, self.vocab, self.seed = n, seq_len, vocab, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        t = torch.randint(self.vocab, (self.seq_len + 1,), generator=g)
        return t[:-1], t[1:]


class BigramTokens(Dataset):
    """Sequences from one fixed random bigram chain (mhc_repro.data.synthetic): learnable, so loss curves
    of two precisions or backends can be compared, unlike uniform tokens whose loss stays at log(vocab)."""

    def __init__(self, n: int, seq_len: int, vocab: int, seed: int) -> None:
        from mhc_repro.data.synthetic import bigram_batches

        self.tok = next(bigram_batches(vocab, n, seq_len, 1, seed)) if n else torch.empty(0, seq_len + 1)

    def __len__(self) -> int:
        return len(self.tok)

    def __getitem__(self, i: int):
        return self.tok[i, :-1], self.tok[i, 1:]


class SyntheticData(L.LightningDataModule):
    def __init__(self, n: int, seq_len: int, vocab: int, batch: int, kind: str = "random") -> None:
        super().__init__()
        ds = BigramTokens if kind == "bigram" else RandomTokens
        # one chain for both splits: validation measures the same bigram statistics on other draws
        self.train_ds, self.val_ds = ds(n, seq_len, vocab, 0), ds(batch, seq_len, vocab, 0 if kind == "bigram" else 1)
        self.batch = batch

    def train_dataloader(self):
        return DataLoader(self.train_ds, batch_size=self.batch, shuffle=False, drop_last=True)

    def val_dataloader(self):
        return DataLoader(self.val_ds, batch_size=self.batch)


class StepTimer(L.Callback):
    """Wall time per optimizer step (synchronised), so tokens/s can skip the warm-up steps."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last = -1

    def on_train_start(self, trainer, pl_module) -> None:
        self._sync()
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, *a) -> None:
        if trainer.global_step != self._last:
            self._last = trainer.global_step
            self._sync()
            self.times.append(time.perf_counter())

    @staticmethod
    def _sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()


class LossRecorder(L.Callback):
    """Each optimizer step's train loss, gradient norm and (16-mixed) GradScaler scale. Placed after
    StepEnd, which computes the step's loss."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.scales: list[float] = []
        self._last = -1

    def on_train_batch_end(self, trainer, pl_module, *a) -> None:
        if trainer.global_step != self._last:
            self._last = trainer.global_step
            self.losses.append(pl_module.last_train_loss)
            norm = pl_module._grad_norm
            self.grad_norms.append(None if norm is None else float(norm))
            scaler = pl_module._grad_scaler()
            if scaler is not None:
                self.scales.append(float(scaler.get_scale()))


class StepProfiler(L.Callback):
    """torch.profiler over optimizer steps [start, start + steps): where those steps' GPU time goes
    (mhc_repro.diagnostics.kernel_profile.summarize), kept in ``summary``. The window runs from the
    start of step ``start``'s first batch to the start of the batch after the window (the trainer
    runs one step more), so it holds each profiled step's own end-of-step work (StepEnd: the MoE
    routing-bias update) and not the validation / amax passes StepEnd runs at the last step. Stopping
    in on_train_batch_end instead put one such pass inside the window (run 74: 4 loss forwards in
    3 steps)."""

    def __init__(self, start: int, steps: int) -> None:
        self.start, self.steps, self.prof, self.summary, self.cuda = start, steps, None, None, False
        self.t0 = 0.0  # perf_counter at the first profiled step

    def on_train_batch_start(self, trainer, *a) -> None:
        step = trainer.global_step
        if self.prof is not None and step == self.start + self.steps:
            self._stop(trainer)
        elif self.prof is None and self.summary is None and step == self.start:
            self.cuda = torch.cuda.is_available() and trainer.strategy.root_device.type == "cuda"
            acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if self.cuda else [])
            StepTimer._sync()
            self.prof = torch.profiler.profile(activities=acts)
            self.prof.__enter__()
            self.t0 = time.perf_counter()

    def on_train_end(self, trainer, *a) -> None:
        if self.prof is not None:  # training ended inside the window: keep the steps it holds
            self._stop(trainer)

    def _stop(self, trainer) -> None:
        StepTimer._sync()
        steps = max(1, trainer.global_step - self.start)  # optimizer steps the window holds
        wall_us = 1e6 * (time.perf_counter() - self.t0) / steps
        self.prof.__exit__(None, None, None)
        from mhc_repro.diagnostics.kernel_profile import summarize

        # the whole kernel table: the top 30 miss most of mHC's kernels (run 83: 5 of them)
        self.summary, self.prof = summarize(self.prof, steps, wall_us, self.cuda, full=True), None


def bench_variant(args, variant: str) -> dict:
    # profiled steps run after the timed ones, and one more step closes their window (StepProfiler)
    total = args.steps + (args.profile_steps + 1 if args.profile_steps else 0)
    over = [f"train.variant={variant}", f"data.seq_len={args.seq_len}", f"data.batch_size={args.micro_batch}",
            f"train.global_batch_size={args.micro_batch * args.accumulate}", f"train.max_steps={total}",
            "train.strategy=auto", "train.devices=1", "tracking.enabled=false", f"train.compile={args.compile}",
            f"model.activation_checkpointing={args.activation_checkpointing}", "train.progress_bar=false",
            *args.set]
    cfg = build_config(args.config, over, env={})
    gpu = torch.cuda.is_available() and args.accelerator != "cpu"
    device = torch.device("cuda" if gpu else "cpu")
    precision = args.precision or ("bf16-mixed" if gpu else "32-true")
    torch.manual_seed(0)
    t_build = time.perf_counter()
    with device:  # initialise the weights directly on the GPU
        module = LMModule(cfg.to_dict())
    build_s = time.perf_counter() - t_build
    tokens_per_step = args.micro_batch * args.accumulate * args.seq_len
    data = SyntheticData(total * args.accumulate * args.micro_batch, args.seq_len, cfg.model.vocab_size,
                         args.micro_batch, args.data)
    timer, perf = StepTimer(), PerfMonitor(window=min(10, args.steps * args.accumulate))
    # validation and amax once, after the last step: outside the timed steps and the profiled window
    # (--final-pass false: neither; their eval-mode graphs cost compile time an A/B of step times wastes)
    every = total if args.final_pass else 0
    step_end = StepEnd(val_every=every, val_batches=1, amax_every=every, diag_dir=Path(args.diag_dir))
    profiler, recorder = StepProfiler(args.steps, args.profile_steps), LossRecorder()
    callbacks = [perf, timer, step_end, recorder] + ([profiler] if args.profile_steps else [])
    trainer = L.Trainer(accelerator="gpu" if gpu else "cpu", devices=1, precision=precision, max_steps=total,
                        max_epochs=-1, accumulate_grad_batches=args.accumulate, logger=False,
                        enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0,
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                        callbacks=callbacks)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=data)
    wall = time.perf_counter() - t0
    times = timer.times[:args.steps]  # the timed steps only (the profiled ones follow them)
    w = min(args.warmup, len(times) - 2)
    measured = len(times) - 1 - w
    elapsed = times[-1] - times[w]
    tok_s = measured * tokens_per_step / elapsed
    fpt = flops_per_token(module.model_cfg, module.params_active, args.seq_len)
    from lightning.fabric.utilities.throughput import get_available_flops

    peak = (dense_peak_flops(device, precision) or get_available_flops(device, torch.bfloat16)) if gpu else None
    step_times = [b - a for a, b in zip([timer.t0] + times[:-1], times)]
    out = {
        "variant": variant, "preset": cfg.train.preset, "steps": len(times), "profiled_steps": args.profile_steps,
        "warmup_steps_excluded": w,
        "seq_len": args.seq_len, "micro_batch": args.micro_batch, "accumulate": args.accumulate,
        "tokens_per_step": tokens_per_step, "tokens_per_sec": tok_s, "step_time_s_median":
            sorted(step_times[w + 1:])[len(step_times[w + 1:]) // 2], "first_step_s": step_times[0],
        # every step, so a slow process can be told from slow steps (3B mHC on a bf16 stream: medians of
        # 215-218 or 242-248 ms per process, reports/training/run85_0fa65a8_stream_dtype_ab)
        "step_times_s": step_times,
        "flops_per_token": fpt, "peak_flops": peak, "mfu": (fpt * tok_s / peak) if peak else None,
        "throughput_monitor": module.last_perf, "params": module.model.num_params(),
        "final_train_loss": module.last_train_loss, "val_loss": module.last_val_loss, "data": args.data,
        # per optimizer step; grad_scale only under "16-mixed" (a non-finite norm = a step the scaler skipped)
        "train_losses": recorder.losses, "grad_norms": recorder.grad_norms, "grad_scales": recorder.scales,
        "build_s": build_s, "fit_wall_s": wall, "precision": precision, "compile": args.compile,
        "activation_checkpointing": args.activation_checkpointing, "final_pass": args.final_pass,
        "residual_backend": cfg.model.residual.backend,
        "residual_recompute": cfg.model.residual.recompute,
        "residual_recompute_blocks": cfg.model.residual.recompute_blocks,
    }
    if args.profile_steps:
        out["profile"] = profiler.summary
    if gpu:
        out["peak_mem_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["peak_mem_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    amax = sorted(Path(args.diag_dir).glob("amax_step*.json"))
    if amax:
        a = json.loads(amax[-1].read_text())
        out["amax_last"] = {k: max(a[k]) for k in ("fwd_single", "bwd_single", "fwd_composite", "bwd_composite")}
        amax[-1].rename(amax[-1].with_name(f"amax_{variant}.json"))
        for png in Path(args.diag_dir).glob("amax_step*.png"):
            png.rename(png.with_name(f"amax_{variant}.png"))
    del trainer, module
    gc.collect()
    if gpu:
        torch.cuda.empty_cache()
    return out


def _flag(text: str) -> bool:
    """A true/false command-line value (1/true/yes are true)."""
    return text.lower() in ("1", "true", "yes")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", action="append", required=True)
    p.add_argument("--variants", nargs="+", default=["residual", "hc", "mhc"])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5, help="optimizer steps excluded from tokens/s")
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--accumulate", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--profile-steps", type=int, default=0,
                   help="after the timed steps, this many more under torch.profiler: µs per step by kernel "
                        "category (mHC kernels, Inductor, GEMM, attention, memory, other) and the top kernels")
    p.add_argument("--activation-checkpointing", type=_flag, default=True)
    p.add_argument("--final-pass", type=_flag, default=True,
                   help="validate and run the Amax diagnostics once after the last step (default true)")
    p.add_argument("--precision", default=None, choices=[None, "32-true", "bf16-mixed", "bf16-true", "16-mixed"],
                   help="Lightning precision (default: bf16-mixed on a GPU, 32-true on the CPU)")
    p.add_argument("--data", default="random", choices=["random", "bigram"],
                   help="synthetic tokens: uniform random (throughput) or a fixed bigram chain (learnable: "
                        "loss curves to compare precisions)")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--out", required=True)
    p.add_argument("--diag-dir", default=None)
    p.add_argument("--retry-reference", action="store_true", help="mhc: on failure retry with the reference ops")
    args = p.parse_args(argv)
    if args.profile_steps < 0:
        p.error(f"--profile-steps {args.profile_steps} is invalid; allowed: 0 (off) or a positive number of steps")
    args.diag_dir = args.diag_dir or str(Path(args.out).with_suffix("")) + "_diag"
    Path(args.diag_dir).mkdir(parents=True, exist_ok=True)
    report = {"command": " ".join([Path(sys.executable).name, "-m", "mhc_repro.training.bench", *sys.argv[1:]]),
              "git_commit": os.environ.get("MHC_GIT_COMMIT", "unknown"), "torch": torch.__version__,
              "lightning": L.__version__, "host": platform.node(), "python": platform.python_version(),
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor(),
              "data": f"synthetic tokens, {args.data} (no MLflow, no data pipeline)", "results": []}
    for v in args.variants:
        t = time.perf_counter()
        try:
            r = bench_variant(args, v)
        except Exception as err:  # record and go on: one failure must not lose the other variants
            r = {"variant": v, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
            if v == "mhc" and args.retry_reference:  # fused kernels failed: measure the reference path
                gc.collect()
                torch.cuda.empty_cache() if torch.cuda.is_available() else None
                args.set = [*args.set, "model.residual.backend=reference"]
                try:
                    r = {**bench_variant(args, v), "first_error": r["error"]}
                except Exception as err2:
                    r["retry_error"] = f"{type(err2).__name__}: {err2}"
        r["total_s"] = time.perf_counter() - t
        report["results"].append(r)
        print(json.dumps({k: r.get(k) for k in ("variant", "tokens_per_sec", "mfu", "peak_mem_allocated_gib",
                                                "step_time_s_median", "first_step_s", "total_s", "error")}), flush=True)
        if r.get("profile"):
            prof = r["profile"]
            print(json.dumps({"variant": v, "profiled_steps": prof["steps"], "wall_us": round(prof["wall_us"]),
                              "kernel_us": round(prof["kernel_us"]),
                              "us_by_category": {k: round(x) for k, x in prof["categories"].items()},
                              "host_api_us": {k: round(x["us"]) for k, x in prof["host_api"].items()}}), flush=True)
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
