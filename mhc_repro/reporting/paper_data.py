"""The paper's published numbers, loaded from paper_numbers.yaml (the single place they live)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml

DATA_FILE = Path(__file__).with_name("paper_numbers.yaml")
VARIANTS = ("residual", "hc", "mhc")
VARIANT_LABELS = {"residual": "Baseline", "hc": "w/ HC", "mhc": "w/ mHC"}
ABLATIONS = ("none", "res", "res+pre", "full")  # increasing number of learned mappings


@dataclass(frozen=True)
class PaperNumbers:
    """Published numbers of arXiv:2512.24880, as plain data."""

    paper: str
    """arXiv id of the paper."""
    tasks: tuple[str, ...]
    """Table 4 task names, in the paper's column order (also the MLflow `eval/<task>` names)."""
    task_labels: dict[str, str]
    """Task name -> column title as printed (e.g. 'HellaSwag')."""
    task_metric: dict[str, str]
    """Task name -> headline metric as printed (EM, F1, Acc.)."""
    task_shots: dict[str, int]
    """Task name -> few-shot count used by the paper."""
    table4: dict[str, dict[str, float]]
    """Variant -> task -> 27B score in percent."""
    table4_scale: str
    """Preset at which Table 4 was measured."""
    table1: dict[str, dict]
    """Ablation tag -> {h_res, h_pre, h_post: bool, loss_gap: float}."""
    scales: dict[str, dict[str, float]]
    """Preset -> {params_total, params_active, tokens, steps} from Table 5."""
    loss: dict
    """Loss-curve claims (27B gap, scaling range, HC surge step)."""
    amax: dict
    """Amax claims (HC composite peak, mHC bounds)."""
    overhead: float
    """mHC extra training time at n = 4 (fraction)."""

    def compute(self, preset: str) -> float:
        """Training compute 6 * N_active * tokens of a Table 5 preset."""
        s = self.scales[preset]
        return 6.0 * s["params_active"] * s["tokens"]


@lru_cache(maxsize=1)
def load_paper_numbers(path: str | None = None) -> PaperNumbers:
    raw = yaml.safe_load(Path(path or DATA_FILE).read_text())
    t4 = raw["table4"]
    tasks = tuple(t4["tasks"])
    for variant in VARIANTS:
        missing = set(tasks) - set(t4["scores"][variant])
        if missing:
            raise ValueError(f"paper numbers: table4 {variant} lacks tasks {sorted(missing)}")
    if set(raw["table1"]["rows"]) != set(ABLATIONS):
        raise ValueError(f"paper numbers: table1 rows must be {list(ABLATIONS)}")
    return PaperNumbers(
        paper=raw["paper"],
        tasks=tasks,
        task_labels=dict(t4["labels"]),
        task_metric=dict(t4["metric"]),
        task_shots={k: int(v) for k, v in t4["shots"].items()},
        table4={v: {k: float(x) for k, x in t4["scores"][v].items()} for v in VARIANTS},
        table4_scale=str(t4["scale"]),
        table1=dict(raw["table1"]["rows"]),
        scales={k: {kk: float(vv) for kk, vv in v.items()} for k, v in raw["scales"].items()},
        loss=dict(raw["loss"]),
        amax=dict(raw["amax"]),
        overhead=float(raw["overhead"]["mhc_time_fraction_n4"]),
    )
