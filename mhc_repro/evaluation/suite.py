"""The paper's evaluation suite, read from ``eval/paper_suite.yaml`` (data, not code), and the stock
lm-eval task YAMLs it points at (found inside the installed ``lm_eval`` package, without importing it)."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import yaml

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SUITE = REPO_ROOT / "eval" / "paper_suite.yaml"
FIXTURES_DIR = REPO_ROOT / "eval" / "fixtures"


@dataclass(frozen=True)
class SuiteTask:
    """One benchmark of the paper's Table 4."""

    name: str
    """Short name: command line, MLflow metric ``eval/<name>``, data file stem."""
    paper_name: str
    """Column header in the paper's Table 4."""
    lm_eval_task: str
    """Stock lm-eval task or group whose prompts, filters and metrics are reused."""
    stock_yaml: Path
    """Absolute path of the stock YAML inside the installed lm_eval package."""
    subtask_dir: Optional[Path]
    """Groups only: directory holding the subtask YAMLs."""
    shots: int
    """Few-shot examples (the paper's setting)."""
    metric: str
    """The paper's metric name (EM, F1, Acc.)."""
    metric_key: str
    """lm-eval result key reporting that metric, e.g. ``acc,none``."""
    columns: tuple[str, ...]
    """The dataset's column schema: what each row of a local JSONL file holds."""
    hub_dataset: str
    """Where the stock task loads from (for users exporting local files)."""

    @property
    def is_group(self) -> bool:
        return self.subtask_dir is not None


@dataclass(frozen=True)
class Subtask:
    """One member task of a stock group (e.g. one BBH task, one MMLU subject)."""

    task: str
    """Stock task name, e.g. ``mmlu_anatomy``."""
    stem: str
    """Its Hugging Face dataset config name, e.g. ``anatomy``: the local file is ``<stem>.jsonl``."""
    yaml_path: Path
    """Stock YAML of the subtask."""
    config: dict
    """The stock YAML merged with its includes (``!function`` entries left as strings)."""


@dataclass(frozen=True)
class Suite:
    tasks: dict[str, SuiteTask]
    """Tasks by short name, in the file's order."""
    lm_eval_version: str
    """lm-eval version the mapping was written against."""
    task_prefix: str
    """Prefix of generated task names (a stock task of the same name would otherwise win)."""
    path: Path
    """The suite file."""

    def select(self, names: Optional[list[str]] = None) -> list[SuiteTask]:
        """Tasks by name in suite order; all when ``names`` is empty."""
        if not names:
            return list(self.tasks.values())
        bad = [n for n in names if n not in self.tasks]
        if bad:
            raise ValueError(f"unknown task(s) {bad}; allowed: {', '.join(self.tasks)}")
        return [self.tasks[n] for n in self.tasks if n in names]


def lm_eval_tasks_dir() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("lm-eval is not installed (pip install 'lm-eval[math]==0.4.13')")
    return Path(list(spec.submodule_search_locations)[0]) / "tasks"


def installed_lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


class _StockLoader(yaml.SafeLoader):
    """Reads stock YAMLs for their structure; ``!function`` references stay strings (lm-eval resolves
    them itself when it loads the generated YAMLs that include these files)."""


_StockLoader.add_constructor("!function", lambda loader, node: f"!function {loader.construct_scalar(node)}")


@lru_cache(maxsize=None)
def _read_yaml_cached(path: Path) -> dict:
    with open(path, "rb") as fh:
        cfg = yaml.load(fh, Loader=_StockLoader)  # noqa: S506 - SafeLoader subclass
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: expected a YAML mapping")
    includes = cfg.pop("include", None)
    if includes is None:
        return cfg
    merged: dict[str, Any] = {}
    for inc in includes if isinstance(includes, list) else [includes]:
        merged.update(_read_yaml_cached((path.parent / inc).resolve()))
    merged.update(cfg)
    return merged


def read_stock_yaml(path: Path) -> dict:
    """A stock YAML merged with its ``include:`` chain (local keys win), as lm-eval merges it."""
    return dict(_read_yaml_cached(Path(path).resolve()))


def load_suite(path: Optional[Path] = None) -> Suite:
    """Parse the suite file and check that every stock YAML it names exists in the installed lm-eval."""
    path = Path(path or DEFAULT_SUITE)
    if not path.is_file():
        raise FileNotFoundError(f"suite file {path} not found")
    raw = yaml.safe_load(path.read_text())
    root = lm_eval_tasks_dir()
    tasks: dict[str, SuiteTask] = {}
    for t in raw["tasks"]:
        stock = root / t["stock_yaml"]
        if not stock.is_file():
            raise FileNotFoundError(f"suite task {t['name']}: stock YAML {stock} missing from lm-eval "
                                    f"{installed_lm_eval_version()} (suite written for {raw['lm_eval_version']})")
        shots = t["shots"]
        if not isinstance(shots, int) or shots < 0:
            raise ValueError(f"suite task {t['name']}: shots={shots!r}; must be an int >= 0")
        tasks[t["name"]] = SuiteTask(
            name=t["name"], paper_name=t["paper_name"], lm_eval_task=t["lm_eval_task"], stock_yaml=stock,
            subtask_dir=(root / t["subtask_dir"]) if t.get("subtask_dir") else None, shots=shots,
            metric=t["metric"], metric_key=t["metric_key"], columns=tuple(t["columns"]),
            hub_dataset=t.get("hub_dataset", ""))
    version = str(raw["lm_eval_version"])
    if installed_lm_eval_version() != version:
        log.warning("suite written for lm-eval %s, installed %s: task versions may differ",
                    version, installed_lm_eval_version())
    return Suite(tasks=tasks, lm_eval_version=version, task_prefix=raw.get("task_prefix", "mhc_"), path=path)


def group_subtasks(task: SuiteTask) -> list[Subtask]:
    """The leaf tasks of a stock group, expanding nested groups and tags (MMLU's categories), in the
    order the stock YAMLs list them."""
    if not task.is_group:
        raise ValueError(f"{task.name} is not a group task")
    by_task: dict[str, tuple[Path, dict]] = {}
    by_group: dict[str, dict] = {}
    by_tag: dict[str, list[str]] = {}
    for p in sorted(task.subtask_dir.glob("*.yaml")) + sorted(task.subtask_dir.glob("_*_yaml")):
        cfg = read_stock_yaml(p)
        if "group" in cfg:
            by_group[cfg["group"]] = cfg
        elif isinstance(cfg.get("task"), str):
            by_task[cfg["task"]] = (p, cfg)
            tags = cfg.get("tag") or []
            for tag in [tags] if isinstance(tags, str) else tags:
                by_tag.setdefault(tag, []).append(cfg["task"])

    def expand(name: str) -> list[str]:
        if name in by_task:
            return [name]
        if name in by_group:
            return [leaf for member in by_group[name]["task"] for leaf in expand(member)]
        if name in by_tag:
            return sorted(by_tag[name])
        raise ValueError(f"{task.name}: stock member {name!r} not found under {task.subtask_dir}")

    group_cfg = read_stock_yaml(task.stock_yaml)
    leaves = [leaf for member in group_cfg["task"] for leaf in expand(member)]
    return [Subtask(task=leaf, stem=by_task[leaf][1].get("dataset_name") or leaf,
                    yaml_path=by_task[leaf][0], config=by_task[leaf][1]) for leaf in leaves]
