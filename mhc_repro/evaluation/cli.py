"""`mhc-repro eval`: score trained checkpoints on the paper's suite and log the results to MLflow.

    mhc-repro eval --run <mlflow run id | run dir | .ckpt> [...] [--tasks bbh drop ...]
                   [--data-dir DIR] [--limit N] [--batch-size N] [--device cpu|cuda]
    mhc-repro eval --study tiny --data-dir eval/fixtures      # every training run of an experiment

Without --data-dir the stock lm-eval datasets load from the Hugging Face hub (needs internet).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class Target:
    """A model to score: what ``load_lm`` takes, and the training run it belongs to (if tracked)."""

    checkpoint: str
    train_run_id: Optional[str]


def _run_id_next_to(run_dir: Path) -> Optional[str]:
    f = run_dir / "mlflow_run_id.txt"
    return f.read_text().strip() or None if f.is_file() else None


def resolve_target(spec: str, tracking_uri: Optional[str] = None) -> Target:
    """A run directory, a ``.ckpt`` (its run directory's MLflow id is picked up) or an MLflow run id."""
    p = Path(spec)
    if p.is_dir() and p.suffix != ".ckpt":  # a run directory (FSDP2 checkpoints are *.ckpt directories)
        return Target(str(p.resolve()), _run_id_next_to(p))
    if p.exists():
        run_dir = p.parent.parent if p.parent.name == "checkpoints" else p.parent
        return Target(str(p.resolve()), _run_id_next_to(run_dir))
    if RUN_ID.match(spec):
        from mlflow.tracking import MlflowClient

        from mhc_repro.tracking.store import resolve_tracking_uri

        from mlflow.exceptions import MlflowException

        uri = resolve_tracking_uri(tracking_uri)
        try:
            run = MlflowClient(tracking_uri=uri).get_run(spec)
        except MlflowException as err:
            raise FileNotFoundError(f"--run {spec}: no such MLflow run in {uri} "
                                    "(set MLFLOW_TRACKING_URI to the store that holds it)") from err
        for tag in ("checkpoint_path", "run_dir"):
            path = run.data.tags.get(tag)
            if path and Path(path).exists():
                return Target(path, spec)
        raise FileNotFoundError(f"--run {spec}: MLflow run has no existing checkpoint_path/run_dir tag in {uri}")
    raise FileNotFoundError(f"--run {spec}: not a run directory, checkpoint file or MLflow run id (32 hex)")


def study_targets(experiment: str, tracking_uri: Optional[str] = None) -> list[Target]:
    """All finished training runs of an MLflow experiment (a study)."""
    from mlflow.tracking import MlflowClient

    from mhc_repro.tracking.store import resolve_tracking_uri

    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise ValueError(f"--study {experiment}: no such MLflow experiment")
    runs = client.search_runs([exp.experiment_id], "tags.run_kind = 'train' and attributes.status = 'FINISHED'")
    if not runs:
        raise ValueError(f"--study {experiment}: no finished training runs")
    return [resolve_target(r.info.run_id, tracking_uri) for r in runs]


def check_device(device: str) -> str:
    """``device`` as torch understands it, refused up front (one line) when unusable on this machine."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device {device}: not a torch device (cpu, cuda or cuda:N)") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise ValueError(f"--device {device}: only cpu, cuda or cuda:N are supported")
    return device


def check_parent_runs(targets: list[Target], tracking_uri: Optional[str] = None) -> None:
    """Every target's training run must exist in the store its eval child run will be logged to; checked
    before any scoring, so a wrong store fails in a second instead of after the whole evaluation."""
    wanted = [t for t in targets if t.train_run_id]
    if not wanted:
        return
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from mhc_repro.tracking.store import resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    for t in wanted:
        try:
            client.get_run(t.train_run_id)
        except MlflowException as err:
            raise ValueError(f"{t.checkpoint}: its training run {t.train_run_id} is not in the MLflow store "
                             f"{uri}; set MLFLOW_TRACKING_URI to the store it was trained into, or pass "
                             "--no-mlflow") from err


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="score checkpoints on the paper's eight tasks (lm-eval) into MLflow",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", nargs="+", help="MLflow run id(s), run directories or .ckpt files")
    src.add_argument("--study", help="MLflow experiment: score all its finished training runs")
    p.add_argument("--tasks", nargs="+", help="subset of bbh drop gsm8k hellaswag math mmlu piqa triviaqa "
                   "(comma or space separated; default all)")
    p.add_argument("--data-dir", type=Path, help="local JSONL files (layout: mhc_repro/evaluation/offline.py); "
                   "eval/fixtures for the bundled tiny fixtures; default: the hub datasets")
    p.add_argument("--strict", action="store_true", help="with --data-dir: require every subtask of bbh/math/mmlu")
    p.add_argument("--limit", type=float, help="documents per task (int) or fraction (<1)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (default 16)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's; 1 is best for tiny models "
                   "on a busy machine)")
    p.add_argument("--max-gen-toks-cap", type=int, help="cap every task's generation length (smoke runs)")
    p.add_argument("--experiment", default="eval", help="MLflow experiment for checkpoints without a training run")
    p.add_argument("--no-mlflow", action="store_true", help="print (and --output) only; log nothing")
    p.add_argument("--output", type=Path, help="also write the headline scores as JSON here")
    p.add_argument("--suite", type=Path, help="suite file (default eval/paper_suite.yaml)")
    p.add_argument("--rescore", action="store_true", help="with --study: score again the checkpoints that "
                   "already have a finished eval run with these tasks, limit, data and cap (default: skip them)")
    p.set_defaults(func=main)


def _task_names(raw: Optional[list[str]]) -> list[str]:
    return [t for item in raw or [] for t in item.split(",") if t]


def main(args: argparse.Namespace) -> int:
    import os

    if args.data_dir is not None:
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}; must be >= 1")
    if args.limit is not None and args.limit <= 0:
        raise ValueError(f"--limit {args.limit}; must be > 0")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads {args.threads}; must be >= 1")
        import torch

        torch.set_num_threads(args.threads)
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    import datasets

    datasets.disable_progress_bars()  # one bar per split and map otherwise; lm-eval keeps its own
    from mhc_repro.training.checkpoint import resolve_checkpoint

    from .lm_model import MhcReproLM, default_device
    from .mlflow_log import find_eval, log_eval
    from .runner import evaluate_suite
    from .suite import load_suite

    suite = load_suite(args.suite)
    tasks = suite.select(_task_names(args.tasks))
    device = check_device(args.device or default_device())
    targets = study_targets(args.study) if args.study else [resolve_target(r) for r in args.run]
    if not args.no_mlflow:
        check_parent_runs(targets)
    summary: list[dict] = []

    def write_output() -> None:
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(summary, indent=2))

    for target in targets:
        t0 = time.perf_counter()
        ckpt = str(resolve_checkpoint(target.checkpoint)[0])  # a run dir's newest, fixed for this eval
        done = None if not args.study or args.rescore or args.no_mlflow or not target.train_run_id else find_eval(
            target.train_run_id, checkpoint=ckpt, tasks=[t.name for t in tasks], limit=limit,
            data_dir=args.data_dir, max_gen_toks_cap=args.max_gen_toks_cap)
        if done:
            print(f"\n{ckpt}: already scored in eval run {done} (--rescore to score it again)")
            summary.append({"checkpoint": ckpt, "train_run_id": target.train_run_id, "eval_run_id": done,
                            "skipped": True})
            write_output()
            continue
        lm = MhcReproLM(ckpt, batch_size=args.batch_size, device=device,
                        max_gen_toks_cap=args.max_gen_toks_cap)
        try:
            result = evaluate_suite(lm, suite, tasks, data_dir=args.data_dir, limit=limit, strict=args.strict)
        except ConnectionError as err:  # datasets' offline / unreachable hub
            raise ValueError(f"{err}; without --data-dir the tasks load from the Hugging Face hub: pass "
                             "--data-dir DIR (eval/fixtures for the bundled fixtures)") from err
        total = time.perf_counter() - t0
        print(f"\n{ckpt}  ({total:.1f} s incl. loading)")
        print(f"  {'task':<10} {'metric':<6} {'shots':>5} {'score':>7}  subtasks")
        for t in tasks:
            print(f"  {t.name:<10} {t.metric:<6} {result.shots[t.name]:>5} "
                  f"{100 * result.headline[t.name]:>7.2f}  {result.coverage[t.name]}")
        entry = {"checkpoint": ckpt, "train_run_id": target.train_run_id,
                 "eval_run_id": None, "seconds": total, "scores": result.headline,
                 "shots": result.shots, "coverage": result.coverage}
        summary.append(entry)
        write_output()  # the scores are kept even if logging to MLflow fails below
        if not args.no_mlflow:
            extra = {"eval.checkpoint": ckpt, "eval.device": device,
                     "eval.max_gen_toks_cap": args.max_gen_toks_cap or "none", "eval.max_length": lm.max_length}
            entry["eval_run_id"] = log_eval(result, train_run_id=target.train_run_id,
                                            experiment=args.experiment, batch_size=args.batch_size,
                                            extra_params=extra)
            print(f"  eval run {entry['eval_run_id']}")
            write_output()
    return 0
