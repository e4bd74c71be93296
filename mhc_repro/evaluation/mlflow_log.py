"""Evaluation results into MLflow (DESIGN.md "MLflow conventions"): a child run of the training run with
sanitised metric names, shots/batch size/versions as params, full results and per-sample outputs as
artifacts."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional

from .runner import SuiteResult

COPIED_TAGS = ("variant", "preset", "seed", "ablation", "study")  # from the training run


def metric_name(*parts: str) -> str:
    """MLflow-safe metric name: lm-eval's ``acc,none`` -> ``acc_none``; other odd characters -> ``_``."""
    return "/".join(re.sub(r"[^A-Za-z0-9_\-. /]", "_", p.replace(",", "_")) for p in parts)


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


def result_metrics(result: SuiteResult) -> dict[str, float]:
    """``eval/<task>`` (headline) and ``eval/<task>/<key>`` for every numeric lm-eval key."""
    out = {metric_name("eval", t): v for t, v in result.headline.items()}
    for task, row in result.metrics.items():
        for key, value in row.items():
            out[metric_name("eval", task, key)] = value
    out["perf/eval_seconds"] = result.seconds
    return out


def result_params(result: SuiteResult, *, batch_size: int, extra: Optional[Mapping[str, Any]] = None) -> dict[str, str]:
    params = {"eval.batch_size": batch_size, "eval.limit": "none" if result.limit is None else result.limit,
              "eval.data": result.data_dir or "hub", "lm_eval.version": result.lm_eval_version}
    for task in result.headline:
        params[f"eval.shots.{task}"] = result.shots[task]
        params[f"eval.task_version.{task}"] = result.versions[task]
        params[f"eval.coverage.{task}"] = result.coverage[task]
    params.update(extra or {})
    return {k: str(v) for k, v in params.items()}


def log_eval(result: SuiteResult, *, train_run_id: Optional[str] = None, experiment: str = "eval",
             batch_size: int, extra_params: Optional[Mapping[str, Any]] = None,
             extra_tags: Optional[Mapping[str, str]] = None, tracking_uri: Optional[str] = None) -> str:
    """Create the eval run (a child of ``train_run_id`` when given, in its experiment) and return its id."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from mhc_repro.tracking.runinfo import environment, git_commit
    from mhc_repro.tracking.store import PAPER_ID, get_or_create_experiment, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri)
    tags = {"run_kind": "eval", "paper": PAPER_ID, "git_commit": git_commit(),
            "eval.tasks": ",".join(result.headline), **{f"env.{k}": v for k, v in environment().items()}}
    run_name = "eval"
    if train_run_id:
        parent = client.get_run(train_run_id)  # raises if the id is unknown in this store
        exp_id = parent.info.experiment_id
        tags.update({"mlflow.parentRunId": train_run_id, "train_run_id": train_run_id})
        tags.update({k: parent.data.tags[k] for k in COPIED_TAGS if k in parent.data.tags})
        run_name = f"eval-{parent.info.run_name or train_run_id[:8]}"
    else:
        exp_id = get_or_create_experiment(client, experiment, uri)
    tags.update(extra_tags or {})
    run = client.create_run(exp_id, run_name=run_name, tags=tags)
    rid = run.info.run_id
    try:
        metrics = [Metric(k, float(v), 0, 0) for k, v in result_metrics(result).items()]
        params = [Param(k, v) for k, v in result_params(result, batch_size=batch_size, extra=extra_params).items()]
        for i in range(0, len(metrics), 900):  # MLflow caps a batch at 1000 entries
            client.log_batch(rid, metrics=metrics[i:i + 900])
        for i in range(0, len(params), 90):
            client.log_batch(rid, params=params[i:i + 90])
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            summary = {"headline": result.headline, "shots": result.shots, "coverage": result.coverage,
                       "seconds": result.seconds, "lm_eval": result.raw}
            (d / "results.json").write_text(json.dumps(summary, indent=2, default=_json_default))
            for task, rows in result.samples.items():
                with open(d / f"samples_{task}.jsonl", "w") as fh:
                    for row in rows:
                        fh.write(json.dumps(row, default=_json_default) + "\n")
            client.log_artifacts(rid, tmp, artifact_path="eval")
        client.set_terminated(rid, "FINISHED")
    except BaseException:
        client.set_terminated(rid, "FAILED")
        raise
    return rid


def find_eval(train_run_id: str, *, checkpoint: str, tasks: list[str], limit, data_dir: Optional[str],
              max_gen_toks_cap: Optional[int], tracking_uri: Optional[str] = None) -> Optional[str]:
    """The id of a finished eval child run of ``train_run_id`` that scored this checkpoint on (at least)
    these tasks with the same limit, data and generation cap; None if there is none."""
    from mlflow.tracking import MlflowClient

    from mhc_repro.tracking.store import resolve_tracking_uri

    client = MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))
    exp_id = client.get_run(train_run_id).info.experiment_id
    want = {"eval.checkpoint": str(checkpoint), "eval.limit": "none" if limit is None else str(limit),
            "eval.data": str(Path(data_dir).resolve()) if data_dir else "hub",
            "eval.max_gen_toks_cap": str(max_gen_toks_cap or "none")}
    runs = client.search_runs([exp_id], f"tags.train_run_id = '{train_run_id}' and tags.run_kind = 'eval' "
                                        "and attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"])
    for run in runs:
        scored = set(run.data.tags.get("eval.tasks", "").split(","))
        if set(tasks) <= scored and all(run.data.params.get(k) == v for k, v in want.items()):
            return run.info.run_id
    return None
