"""MLflow -> tidy pandas frames. Reads only through MLflow's client API (search, metric history,
artifact download), following docs/DESIGN.md "MLflow conventions"."""

from __future__ import annotations

import json
import math
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mhc_repro.reporting.paper_data import ABLATIONS, VARIANTS
from mhc_repro.tracking.store import resolve_tracking_uri

HISTORY_KEYS = (
    "train/loss", "val/loss", "train/grad_norm", "train/tokens", "perf/tokens_per_sec",
    "amax/fwd_single_max", "amax/bwd_single_max", "amax/fwd_composite_max", "amax/bwd_composite_max",
)
AMAX_RE = re.compile(r"amax_step(\d+)\.json$")
RUN_COLUMNS = [
    "run_id", "run_name", "status", "preset", "variant", "ablation", "seed", "git_commit", "ran_on", "run_dir",
    "params_total", "params_active", "final_step", "final_train_loss", "final_val_loss", "tokens",
    "tokens_per_sec", "compute",
]
EVAL_COLUMNS = ["train_run_id", "eval_run_id", "task", "score", "shots", "limit", "lm_eval_version"]


@dataclass
class Study:
    """Everything the report needs about one MLflow experiment, as plain frames."""

    experiment: str
    """MLflow experiment name."""
    runs: pd.DataFrame
    """One row per training run (RUN_COLUMNS), sorted by preset, variant, ablation, seed."""
    history: pd.DataFrame
    """Long metric history: run_id, key, step, value (one value per step, last write wins)."""
    evals: pd.DataFrame
    """One row per (training run, task): EVAL_COLUMNS; score is a fraction in [0, 1]."""
    amax: dict = field(default_factory=dict)
    """run_id -> the latest diagnostics/amax_step*.json of that run (dict)."""
    configs: dict = field(default_factory=dict)
    """run_id -> text of the run's config/config.yaml artifact."""
    superseded: list = field(default_factory=list)
    """Run ids dropped because another run has the same (preset, variant, ablation, seed): a finished
    run is preferred over an unfinished (running, failed, killed) one, then the latest start wins."""
    params: dict = field(default_factory=dict)
    """run_id -> the run's MLflow params (flattened resolved config, as strings)."""

    def series(self, run_id: str, key: str) -> pd.DataFrame:
        h = self.history
        return h[(h.run_id == run_id) & (h.key == key)][["step", "value"]].reset_index(drop=True)

    def presets(self) -> list[str]:
        return list(dict.fromkeys(self.runs.preset))

    def main_runs(self, preset: str) -> pd.DataFrame:
        """Runs of the main comparison: baseline, and HC/mHC with all mappings learned."""
        r = self.runs
        return r[(r.preset == preset) & r.ablation.isin(["none", "full"])]


# Params that may differ between the runs of one comparison: what makes the variants differ, run
# bookkeeping, and the keys a run may change on resume (training.run.RESUME_FREE_KEYS).
COMPARISON_FREE_PREFIXES = ("model.residual.", "model.params_", "kernels.", "tracking.")
COMPARISON_FREE_KEYS = frozenset({
    "train.variant", "train.ablation", "train.seed", "train.ckpt_every", "train.amax_every", "train.val_every",
    "train.log_every", "train.throughput_window", "train.progress_bar", "train.torch_threads", "train.fsdp_grad_sync",
    "train.devices", "train.num_nodes", "train.out_dir", "train.compile", "data.num_workers",
    "data.cache_dir", "model.activation_checkpointing", "model.moe.dispatch", "model.moe.shuffle",
})


def ran_on(tags: dict) -> str:
    """Where a run trained, from its ``env.*`` tags (tracking.runinfo.environment); "" for runs logged
    before those tags existed. CPU runs name the ATen capability: AVX-512 and AVX2 kernels round
    differently, so the same CPU run ends at different losses on the two."""
    if not tags.get("env.torch"):
        return ""
    devices = tags.get("env.cuda_devices", "none")
    where = devices if devices != "none" else f"CPU {tags.get('env.aten_cpu_capability', '?')}"
    return f"{where}, torch {tags['env.torch']}"


def config_differences(study: "Study", preset: str) -> dict[str, list[str]]:
    """Params (flattened config keys) whose values differ between the main runs of `preset`, other
    than the variant, seed and bookkeeping keys: key -> sorted distinct values ('—' = not logged).
    A comparison of final losses across such runs is not like for like (e.g. another lr or max_steps)."""
    ids = list(study.main_runs(preset).run_id)
    logged = [study.params[r] for r in ids if r in study.params]
    if len(logged) < 2:
        return {}
    keys = sorted(set().union(*logged))
    out = {}
    for key in keys:
        if key in COMPARISON_FREE_KEYS or key.startswith(COMPARISON_FREE_PREFIXES):
            continue
        values = {str(p.get(key, "—")) for p in logged}
        if len(values) > 1:
            out[key] = sorted(values)
    return out


def _search(client, experiment_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000,
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _seed(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def _history(client, run_id: str, key: str) -> pd.DataFrame:
    rows = [(m.step, m.timestamp, m.value) for m in client.get_metric_history(run_id, key)]
    df = pd.DataFrame(rows, columns=["step", "ts", "value"]).sort_values(["step", "ts"], kind="stable")
    return df.drop_duplicates("step", keep="last")[["step", "value"]]


def _last(h: pd.DataFrame) -> float:
    return float(h.value.iloc[-1]) if len(h) else math.nan


def _download_text(client, run_id: str, path: str, tmp: str) -> str:
    return Path(client.download_artifacts(run_id, path, tmp)).read_text()


def _latest_amax(client, run_id: str, tmp: str) -> dict | None:
    files = [f.path for f in client.list_artifacts(run_id, "diagnostics") if AMAX_RE.search(f.path)]
    if not files:
        return None
    latest = max(files, key=lambda p: int(AMAX_RE.search(p).group(1)))
    data = json.loads(_download_text(client, run_id, latest, tmp))
    data["artifact"] = latest
    return data


def _sort_key(frame: pd.DataFrame) -> pd.DataFrame:
    """Stable, meaningful order: presets by active params, then variant, ablation, seed, run id."""
    order = frame.groupby("preset").params_active.max().fillna(math.inf)
    return frame.assign(
        _p=frame.preset.map(order), _v=frame.variant.map({v: i for i, v in enumerate(VARIANTS)}),
        _a=frame.ablation.map({a: i for i, a in enumerate(ABLATIONS)}),
    ).sort_values(["_p", "preset", "_v", "_a", "seed", "run_id"], kind="stable").drop(
        columns=["_p", "_v", "_a"]).reset_index(drop=True)


def load_study(experiment: str, tracking_uri: str | None = None) -> Study:
    """Read all training and evaluation runs of `experiment` from the MLflow store."""
    from mlflow.tracking import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        # Reading must not create an empty store (MLflow would, silently, for a mistyped path).
        raise ValueError(f"no MLflow store at {uri[len('sqlite:///'):]}; train first, or pass "
                         f"--tracking-uri / set MLFLOW_TRACKING_URI")
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ValueError(f"experiment {experiment!r} not found in the MLflow store; available: {names}")
    train = _search(client, exp.experiment_id, "tags.run_kind = 'train'")
    train = [r for r in train if r.data.tags.get("variant") in VARIANTS]
    if not train:
        raise ValueError(f"experiment {experiment!r} has no training runs (tag run_kind=train, "
                         f"variant in {list(VARIANTS)})")
    rows, hist, amax, configs, params_of = [], [], {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for run in train:
            tags, params, rid = run.data.tags, run.data.params, run.info.run_id
            variant = tags["variant"]
            ablation = tags.get("ablation") or ("none" if variant == "residual" else "full")
            if ablation not in ABLATIONS:
                raise ValueError(f"run {rid}: ablation tag {ablation!r} not in {list(ABLATIONS)}")
            logged = run.data.metrics  # latest values: tells which keys have a history at all
            h = {k: _history(client, rid, k) if k in logged else pd.DataFrame(columns=["step", "value"])
                 for k in HISTORY_KEYS}
            for key, df in h.items():
                hist.append(df.assign(run_id=rid, key=key))
            steps = pd.concat([h["train/loss"].step, h["val/loss"].step])
            active = _float(params.get("model.params_active"))
            tokens = _last(h["train/tokens"])
            rows.append(dict(
                run_id=rid, run_name=run.info.run_name or "", status=run.info.status,
                preset=tags.get("preset", "?"), variant=variant,
                ablation="none" if variant == "residual" else ablation, seed=_seed(tags.get("seed")),
                git_commit=tags.get("git_commit", ""), ran_on=ran_on(tags), run_dir=tags.get("run_dir", ""),
                params_total=_float(params.get("model.params_total")), params_active=active,
                final_step=int(steps.max()) if len(steps) else -1,
                final_train_loss=_last(h["train/loss"]), final_val_loss=_last(h["val/loss"]),
                tokens=tokens, tokens_per_sec=float(h["perf/tokens_per_sec"].value.mean())
                if len(h["perf/tokens_per_sec"]) else math.nan,
                compute=6.0 * active * tokens, start_time=run.info.start_time or 0,
            ))
            params_of[rid] = dict(params)
            if variant != "residual":
                found = _latest_amax(client, rid, tmp)
                if found is not None:
                    amax[rid] = found
            if any(f.path == "config/config.yaml" for f in client.list_artifacts(rid, "config")):
                configs[rid] = _download_text(client, rid, "config/config.yaml", tmp)
    runs = pd.DataFrame(rows)
    # One run per (preset, variant, ablation, seed): a rerun supersedes the earlier one, except that a
    # finished run is never replaced by an unfinished one (a crashed or still-running rerun).
    runs = runs.assign(_finished=runs.status == "FINISHED").sort_values(
        ["_finished", "start_time", "run_id"], kind="stable")
    dup = runs.duplicated(["preset", "variant", "ablation", "seed"], keep="last")
    superseded = sorted(runs[dup].run_id)
    runs = _sort_key(runs[~dup].drop(columns=["start_time", "_finished"]))[RUN_COLUMNS]
    history = pd.concat(hist, ignore_index=True)[["run_id", "key", "step", "value"]]
    history = history[history.run_id.isin(runs.run_id)].reset_index(drop=True)
    evals = _load_evals(client, exp.experiment_id, set(runs.run_id))
    params_of = {rid: p for rid, p in params_of.items() if rid in set(runs.run_id)}
    return Study(experiment, runs, history, evals, amax, configs, superseded, params_of)


def _checkpoint_step(path: str) -> int:
    """The step of a ``step0000100.ckpt`` path (-1 when the name carries none)."""
    m = re.search(r"step(\d+)\.ckpt", str(path))
    return int(m.group(1)) if m else -1


def _load_evals(client, experiment_id: str, train_ids: set) -> pd.DataFrame:
    rows = []
    for run in _search(client, experiment_id, "tags.run_kind = 'eval' and attributes.status = 'FINISHED'"):
        tags, params = run.data.tags, run.data.params
        parent = tags.get("train_run_id") or tags.get("mlflow.parentRunId")
        if parent not in train_ids:
            continue
        for key, value in run.data.metrics.items():
            task = key[len("eval/"):] if key.startswith("eval/") else ""
            if not task or "/" in task:
                continue
            rows.append(dict(
                train_run_id=parent, eval_run_id=run.info.run_id, task=task, score=float(value),
                shots=_seed(params.get(f"eval.shots.{task}")), limit=params.get("eval.limit", ""),
                lm_eval_version=params.get("lm_eval.version", ""), start_time=run.info.start_time or 0,
                full=str(params.get("eval.limit", "none")).lower() in ("", "none", "null"),
                ckpt_step=_checkpoint_step(params.get("eval.checkpoint", "")),
            ))
    if not rows:
        return pd.DataFrame(columns=EVAL_COLUMNS)
    # One evaluation per training run and task: a full one (no --limit) over a subset, then the latest
    # checkpoint's, then the latest started; so a later quick check does not replace the real score.
    ev = pd.DataFrame(rows).sort_values(["full", "ckpt_step", "start_time", "eval_run_id"], kind="stable")
    ev = ev.drop_duplicates(["train_run_id", "task"], keep="last")
    return ev.sort_values(["train_run_id", "task"], kind="stable").reset_index(drop=True)[EVAL_COLUMNS]
