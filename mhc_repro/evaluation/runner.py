"""Run (a subset of) the paper's suite through lm-eval and collect what the paper and MLflow need."""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .suite import Suite, SuiteTask, installed_lm_eval_version
from .offline import GeneratedTask, generate_task_yamls

log = logging.getLogger(__name__)


@dataclass
class SuiteResult:
    """One evaluation of one model on the selected tasks."""

    headline: dict[str, float]
    """Task -> the paper's metric (fraction in [0, 1])."""
    metrics: dict[str, dict[str, float]]
    """Task -> every numeric lm-eval result key of the task (or group) -> value."""
    shots: dict[str, int]
    """Task -> few-shot count lm-eval actually used (read back from its results)."""
    versions: dict[str, Any]
    """Task -> lm-eval task version (groups: the group's; subtasks in ``raw['versions']``)."""
    coverage: dict[str, str]
    """Task -> subtasks scored / subtasks in the stock group ("1/1" for single tasks)."""
    samples: dict[str, list[dict]]
    """Task -> per-document records (subtask name added for groups)."""
    raw: dict
    """lm-eval's results dict without the samples."""
    lm_eval_version: str
    """Installed lm-eval version."""
    data_dir: Optional[str]
    """Local data directory, or None for the hub datasets."""
    limit: Optional[float]
    """Documents per (sub)task, if limited."""
    seconds: float
    """Wall time of the evaluation."""
    tasks: list[GeneratedTask] = field(default_factory=list)


def _number(v: Any) -> Optional[float]:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def evaluate_suite(lm, suite: Suite, tasks: list[SuiteTask], *, data_dir: Optional[Path] = None,
                   limit: Optional[float] = None, strict: bool = False,
                   work_dir: Optional[Path] = None, seed: int = 1234) -> SuiteResult:
    """Score ``lm`` (an lm-eval LM, normally ``MhcReproLM``) on ``tasks``.

    Task YAMLs are generated into ``work_dir`` (a temporary directory by default) and loaded with only
    that directory on the task path. Shots live in the YAMLs; lm-eval gets ``num_fewshot=None``.
    """
    if data_dir is not None:  # local files only: never let datasets reach for the hub
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="mhc_eval_tasks_") as tmp:
        out_dir = Path(work_dir or tmp)
        generated = generate_task_yamls(suite, tasks, out_dir, data_dir=data_dir, strict=strict)
        manager = TaskManager(include_path=str(out_dir), include_defaults=False)
        t0 = time.perf_counter()
        res = simple_evaluate(model=lm, tasks=[g.lm_eval_name for g in generated], task_manager=manager,
                              num_fewshot=None, limit=limit, log_samples=True, bootstrap_iters=1000,
                              random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
                              fewshot_random_seed=seed)
        seconds = time.perf_counter() - t0
    if res is None:
        raise RuntimeError("lm-eval returned no results (non-zero rank?)")
    samples_raw = res.pop("samples", {}) or {}
    headline, metrics, shots, versions, coverage, samples = {}, {}, {}, {}, {}, {}
    for g in generated:
        t, name = g.suite_task, g.lm_eval_name
        row = res["results"].get(name)
        if row is None:
            raise RuntimeError(f"lm-eval returned no results for {name} (task {t.name})")
        metrics[t.name] = {k: v for k, v in ((k, _number(v)) for k, v in row.items()) if v is not None}
        if t.metric_key not in metrics[t.name]:
            raise RuntimeError(f"task {t.name}: lm-eval result has no {t.metric_key!r}; "
                               f"keys: {sorted(metrics[t.name])}")
        headline[t.name] = metrics[t.name][t.metric_key]
        leaves = [f"{name}_{s}" for s in g.subtasks] if t.is_group else [name]
        used = {res.get("n-shot", {}).get(leaf) for leaf in leaves}
        if len(used) != 1 or None in used:
            raise RuntimeError(f"task {t.name}: inconsistent few-shot counts {used}")
        shots[t.name] = int(used.pop())
        versions[t.name] = res.get("versions", {}).get(name)
        coverage[t.name] = g.coverage
        samples[t.name] = [dict(s, subtask=leaf) if t.is_group else s
                           for leaf in leaves for s in samples_raw.get(leaf, [])]
    return SuiteResult(headline=headline, metrics=metrics, shots=shots, versions=versions, coverage=coverage,
                       samples=samples, raw=res, lm_eval_version=installed_lm_eval_version(),
                       data_dir=str(Path(data_dir).resolve()) if data_dir else None, limit=limit, seconds=seconds,
                       tasks=generated)
