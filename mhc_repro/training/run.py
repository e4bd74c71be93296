"""One training run (or a study of several variants) from a RunConfig: run directory, MLflow run,
data, Trainer, resume.

Run directory ``<out_dir>/<experiment>/<run_name>/`` (DESIGN.md): config.yaml, tokenizer.json,
checkpoints/, diagnostics/, mlflow_run_id.txt, and finished.json once the run completed. Rerunning the
same command resumes from the newest checkpoint into the same MLflow run; a finished run is never
overwritten (error, or skipped in a study).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
import yaml

from mhc_repro.training.callbacks import PerfMonitor, StepCheckpoint, StepEnd, latest_checkpoint
from mhc_repro.training.config import RunConfig, fsdp_recompute_error
from mhc_repro.training.module import LMModule, NonFiniteLossError

# Keys that may differ when resuming (they do not change the math of the run; the cadences only change
# how often it is checkpointed, logged, validated and diagnosed from then on).
RESUME_FREE_KEYS = {"train.progress_bar", "train.fsdp_grad_sync", "train.torch_threads", "train.devices", "train.num_nodes",
                    "train.ckpt_every", "train.log_every", "train.val_every", "train.amax_every",
                    "train.out_dir", "train.compile", "tracking.enabled", "tracking.tracking_uri", "data.num_workers",
                    "data.cache_dir", "model.residual.backend", "model.activation_checkpointing",
                    "model.residual.recompute", "model.residual.recompute_blocks", "model.residual.kernel_precision",
                    "model.residual.sublayer_ops", "model.moe.dispatch", "model.moe.shuffle"}


class RunFinishedError(ValueError):
    """The run directory already holds a finished run."""


def run_dir_of(cfg: RunConfig) -> Path:
    return Path(cfg.train.out_dir).expanduser().resolve() / cfg.experiment / cfg.run_name


def check_writable(out_dir: str) -> None:
    root = Path(out_dir).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root):
            pass
    except OSError as err:
        raise ValueError(f"train.out_dir={out_dir!r} is not writable ({err.strerror or err}); "
                         "give a writable directory") from None


def _first_difference(a: Any, b: Any, prefix: str = "") -> Optional[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            key = f"{prefix}{k}"
            if key in RESUME_FREE_KEYS:
                continue
            d = _first_difference(a.get(k), b.get(k), key + ".")
            if d:
                return d
        return None
    return None if a == b else f"{prefix[:-1]}: {a!r} (run dir) vs {b!r} (now)"


def is_global_rank_zero() -> bool:
    """Before the Trainer exists: torchrun sets RANK, SLURM sets SLURM_PROCID, Lightning's own launcher
    sets NODE_RANK/LOCAL_RANK in the processes it spawns."""
    env = os.environ
    for key in ("RANK", "SLURM_PROCID"):
        if env.get(key):
            return int(env[key]) == 0
    return int(env.get("NODE_RANK", "0") or 0) == 0 and int(env.get("LOCAL_RANK", "0") or 0) == 0


def _world_size(cfg: RunConfig) -> int:
    env = os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS")
    if env:
        return int(env)
    t = cfg.train
    gpus = torch.cuda.is_available() and t.accelerator != "cpu"
    per_node = (torch.cuda.device_count() if gpus else 1) if t.devices == "auto" else int(t.devices)
    return per_node * t.num_nodes


def accumulation(cfg: RunConfig) -> int:
    """Micro-batches per optimizer step to reach train.global_batch_size."""
    micro = cfg.data.batch_size * _world_size(cfg)
    g = cfg.train.global_batch_size or micro
    if g % micro:
        raise ValueError(f"train.global_batch_size={g} is not a multiple of data.batch_size x world size = {micro}")
    return g // micro


def _precision(cfg: RunConfig) -> str:
    if cfg.train.precision != "auto":
        return cfg.train.precision
    gpu = cfg.train.accelerator != "cpu" and torch.cuda.is_available()
    return "bf16-mixed" if gpu else "32-true"


def _strategy(cfg: RunConfig):
    if cfg.train.strategy == "fsdp":
        from mhc_repro.training.fsdp import FSDP2Strategy

        return FSDP2Strategy(grad_sync=cfg.train.fsdp_grad_sync)
    return cfg.train.strategy


def _open_mlflow_run(cfg: RunConfig, run_dir: Path, params: tuple[int, int], *, commit: str,
                     env: dict[str, str], from_checkpoint: bool = False):
    """(logger, resumed?) — creates or reopens the MLflow run whose id is kept in the run dir; ``commit``
    and ``env`` are this launch's (tracking.runinfo.git_commit / record_environment).

    Resuming from a checkpoint whose MLflow run the store does not hold (another MLFLOW_TRACKING_URI than
    the first launch's, or a moved store) is an error: a fresh MLflow run would hold only the steps after
    the checkpoint, and the run directory would lose the id of the run that holds the earlier ones."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from mhc_repro.tracking.logger import ResumableMLFlowLogger
    from mhc_repro.tracking.runinfo import log_config, train_tags
    from mhc_repro.tracking.store import artifact_root, get_or_create_experiment, resolve_tracking_uri

    uri = resolve_tracking_uri(cfg.tracking.tracking_uri)
    client = MlflowClient(uri)
    exp_id = get_or_create_experiment(client, cfg.experiment, uri)
    id_file = run_dir / "mlflow_run_id.txt"
    run_id = id_file.read_text().strip() if id_file.exists() else None
    if run_id:
        try:
            client.get_run(run_id)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise  # e.g. a locked or unreachable store: not a reason to fork the run's history
            if from_checkpoint:
                raise ValueError(f"run directory {str(run_dir)!r} resumes from a checkpoint but its MLflow run "
                                 f"{run_id} is not in the tracking store {uri!r}; point MLFLOW_TRACKING_URI (or "
                                 "tracking.tracking_uri) at the store of the first launch, or delete "
                                 f"{str(id_file)!r} to log the remaining steps to a new MLflow run") from None
            run_id = None  # no checkpoint yet: a fresh MLflow run gets the whole history
    resumed = run_id is not None
    if not resumed:
        tags = train_tags(cfg.to_dict(), run_dir=str(run_dir), commit=commit, env=env)
        run_id = client.create_run(exp_id, run_name=cfg.run_name, tags=tags).info.run_id
        tmp = id_file.with_suffix(".tmp")
        tmp.write_text(run_id + "\n")
        tmp.replace(id_file)
        from mhc_repro.kernels import launch_settings

        log_config(client, run_id, cfg.to_dict(), *params, kernels=launch_settings())
    else:
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "resumed_at_commit", commit)
    client.log_artifact(run_id, str(run_dir / "environment.jsonl"))  # all launches' lines
    logger = ResumableMLFlowLogger(experiment_name=cfg.experiment, tracking_uri=uri, run_id=run_id,
                                   artifact_location=artifact_root(uri), log_model=False)
    if resumed:
        logger.load_high_water()
    return logger, resumed


def check_run_dir(cfg: RunConfig, *, resume: bool = True) -> Path:
    """Every check that needs neither data nor model, before anything is written (a study runs it for
    all its runs up front): valid config, writable out_dir, the gradient accumulation, and the run
    directory: RunFinishedError if it holds a finished run of this config, ValueError if it holds a
    run (finished or not) of another config, or an unfinished one while resume is off."""
    cfg.validate()
    if cfg.train.strategy == "fsdp":
        err = fsdp_recompute_error(cfg.model, _precision(cfg).startswith("bf16"))
        if err:
            raise ValueError(err)
    check_writable(cfg.train.out_dir)
    accumulation(cfg)
    run_dir = run_dir_of(cfg)
    resolved = cfg.to_dict()
    cfg_file = run_dir / "config.yaml"
    diff = _first_difference(yaml.safe_load(cfg_file.read_text()), resolved) if cfg_file.exists() else None
    if (run_dir / "finished.json").exists():
        # A finished run of *another* config is not "already done": a study must not skip it silently
        # (RunFinishedError is what a study skips), so that case is a plain error.
        if diff:
            raise ValueError(f"run directory {str(run_dir)!r} holds a finished run with another config ({diff}); "
                             "pick another tracking.run_name (--set tracking.run_name=...) or delete that directory")
        raise RunFinishedError(f"run directory {str(run_dir)!r} already holds a finished run; pick another "
                               "tracking.run_name (--set tracking.run_name=...) or delete that directory")
    if cfg_file.exists():
        if not resume and is_global_rank_zero():  # other ranks start after rank 0 wrote config.yaml
            raise ValueError(f"run directory {str(run_dir)!r} holds an unfinished run and resume is off; "
                             "delete it or pick another tracking.run_name")
        if diff:
            raise ValueError(f"run directory {str(run_dir)!r} holds a run with another config ({diff}); "
                             "pick another tracking.run_name or delete that directory")
    return run_dir


def train(cfg: RunConfig, *, resume: bool = True) -> dict:
    """Train one run to ``train.max_steps``. Returns a summary dict (also written to finished.json)."""
    run_dir = check_run_dir(cfg, resume=resume)
    resolved = cfg.to_dict()
    cfg_file = run_dir / "config.yaml"
    is_rank0 = is_global_rank_zero()
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    if is_rank0 and not cfg_file.exists():
        cfg_file.write_text(yaml.safe_dump(resolved, sort_keys=False))

    if cfg.train.torch_threads:
        torch.set_num_threads(cfg.train.torch_threads)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    accum = accumulation(cfg)  # checked above, before anything was written

    from mhc_repro.data.datamodule import LMDataModule

    t0 = time.perf_counter()
    dm = LMDataModule(cfg.data, model_vocab_size=cfg.model.vocab_size,
                      step_batch=cfg.train.global_batch_size).prepare()
    if is_rank0 and dm.tokenizer_path is not None:
        shutil.copyfile(dm.tokenizer_path, run_dir / "tokenizer.json")
        (run_dir / "data_manifest.json").write_text(json.dumps(dm.manifest, indent=1, default=str))
    data_s = time.perf_counter() - t0

    module = LMModule(resolved)
    ckpt = latest_checkpoint(run_dir / "checkpoints") if resume else None
    logger, resumed = (None, False)
    if is_rank0:  # with or without MLflow: what this launch ran on (tracking.runinfo.environment)
        from mhc_repro.tracking.runinfo import git_commit, record_environment

        commit = git_commit()
        env = record_environment(run_dir, commit)
    if cfg.tracking.enabled and is_rank0:
        logger, resumed = _open_mlflow_run(cfg, run_dir, (module.params_total, module.params_active),
                                           commit=commit, env=env, from_checkpoint=ckpt is not None)
        logger.set_tag("data_source", str(dm.manifest.get("source", cfg.data.source or "embedded"))[:500])
        if not resumed and (run_dir / "data_manifest.json").exists():  # corpus, split, tokenizer, token counts
            logger.log_artifact(str(run_dir / "data_manifest.json"), "data")

    t = cfg.train
    step_end = StepEnd(t.val_every, t.val_batches, t.amax_every, run_dir / "diagnostics")
    ckpt_cb = StepCheckpoint(run_dir / "checkpoints", t.ckpt_every, step_end)
    trainer = L.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=_strategy(cfg),
        precision=_precision(cfg), max_steps=t.max_steps, max_epochs=-1, accumulate_grad_batches=accum,
        limit_val_batches=0, num_sanity_val_steps=0, logger=logger if logger is not None else False,
        callbacks=[PerfMonitor(t.throughput_window), step_end, ckpt_cb], enable_checkpointing=False,
        enable_progress_bar=t.progress_bar, enable_model_summary=False, log_every_n_steps=1,
        use_distributed_sampler=False, default_root_dir=str(run_dir), gradient_clip_val=None,
    )
    start = time.perf_counter()
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None)
    except NonFiniteLossError as err:
        last = latest_checkpoint(run_dir / "checkpoints")
        if logger is not None:
            logger.set_tag("stop_reason", str(err)[:500])
        raise NonFiniteLossError(f"{err} [last good checkpoint: {last or 'none'}]") from None
    if trainer.interrupted:
        raise KeyboardInterrupt(f"training interrupted at step {trainer.global_step}; rerun the same command to resume")
    summary = {
        "run_dir": str(run_dir), "experiment": cfg.experiment, "run_name": cfg.run_name,
        "variant": t.variant, "preset": t.preset, "seed": t.seed, "steps": trainer.global_step,
        "resumed_from": str(ckpt) if ckpt else None, "final_train_loss": module.last_train_loss,
        "final_val_loss": module.last_val_loss, "train_seconds": time.perf_counter() - start,
        "data_seconds": data_s, "accumulate_grad_batches": accum, "params": module.model.num_params(),
        "checkpoint": str(ckpt_cb.last_path or latest_checkpoint(run_dir / "checkpoints")),
        "mlflow_run_id": logger.run_id if logger is not None else None, "perf": module.last_perf,
    }
    if is_rank0:
        (run_dir / "finished.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary
