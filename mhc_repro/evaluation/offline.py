"""Generate lm-eval task YAMLs for the suite: per-task shots always, local JSONL data when offline.

Every generated YAML ``include:``s the stock task YAML by absolute path (so prompts, filters and metrics
are lm-eval's own) and overrides ``task:`` with a prefixed name and ``num_fewshot:`` with the paper's
shots (a global ``num_fewshot`` would override every task; ENGINEERING.md). With a data directory it
also overrides ``dataset_path: json`` and ``dataset_kwargs.data_files`` (absolute paths).

Data directory layout (each row in the dataset's own column schema, see eval/paper_suite.yaml):

    <data_dir>/<task>.jsonl                    evaluation split of a single task (drop, gsm8k, ...)
    <data_dir>/<task>.<split>.jsonl            optional few-shot pool (hellaswag.train.jsonl,
                                               drop.train.jsonl, triviaqa.train.jsonl)
    <data_dir>/<group>/<subtask>.jsonl         one file per subtask of bbh, math, mmlu; <subtask> is the
                                               HF config name (bbh/boolean_expressions.jsonl,
                                               math/algebra.jsonl, mmlu/anatomy.jsonl)
    <data_dir>/<group>/<subtask>.dev.jsonl     optional MMLU few-shot pool

Without a few-shot file, shots come from the evaluation file itself, never the document being scored
(lm-eval drops it when the few-shot split is the test split). Tasks whose stock YAML carries fixed
exemplars (BBH, GSM8K-CoT, MATH) ignore few-shot files. A group scores the subtasks that have files
(the stock size-weighted aggregation over those); the coverage is reported and ``strict=True``
requires all of them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from .suite import Suite, SuiteTask, group_subtasks, read_stock_yaml

log = logging.getLogger(__name__)


@dataclass
class GeneratedTask:
    """What was generated for one suite task."""

    suite_task: SuiteTask
    lm_eval_name: str
    """Name to pass to lm-eval (a task, or a group for bbh/math/mmlu)."""
    subtasks: list[str] = field(default_factory=list)
    """Groups: stems of the subtasks included."""
    n_subtasks_total: int = 0
    """Groups: subtasks in the stock group."""
    data_files: dict[str, dict[str, str]] = field(default_factory=dict)
    """Generated task name -> split -> absolute file (offline only)."""

    @property
    def coverage(self) -> str:
        return f"{len(self.subtasks)}/{self.n_subtasks_total}" if self.n_subtasks_total else "1/1"


def _schema_hint(task: SuiteTask) -> str:
    return f"rows in the {task.hub_dataset} schema with columns {list(task.columns)}"


def _splits(stock: dict) -> tuple[str, str, bool]:
    """(evaluation split, few-shot split name, whether the stock YAML has fixed few-shot exemplars)."""
    eval_split = stock.get("test_split") or stock.get("validation_split")
    if not eval_split:
        raise ValueError(f"stock task {stock.get('task')!r} declares no test or validation split")
    fixed = bool((stock.get("fewshot_config") or {}).get("samples"))
    return eval_split, stock.get("fewshot_split") or stock.get("training_split") or "train", fixed


def check_jsonl(path: Path, task: SuiteTask) -> int:
    """Rows in ``path`` after checking that each line is a JSON object holding the task's columns; a bad
    file is a one-line error naming the file, the line and the schema (otherwise ``datasets`` or a
    prompt template fails deep inside lm-eval, after the model has loaded)."""
    import json

    rows = 0
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"task {task.name}: {path}:{lineno}: not valid JSON ({err.msg}); "
                                 f"expected one object per line, {_schema_hint(task)}") from err
            if not isinstance(row, dict):
                raise ValueError(f"task {task.name}: {path}:{lineno}: a JSON {type(row).__name__}, not an "
                                 f"object; {_schema_hint(task)}")
            missing = [c for c in task.columns if c not in row]
            if missing:
                raise ValueError(f"task {task.name}: {path}:{lineno}: missing column(s) {missing}; "
                                 f"{_schema_hint(task)}")
            rows += 1
    if rows == 0:
        raise ValueError(f"task {task.name}: {path} holds no rows ({_schema_hint(task)})")
    return rows


def _data_overrides(stock: dict, eval_file: Path, task: SuiteTask) -> tuple[dict, dict[str, str]]:
    eval_split, fs_split, fixed = _splits(stock)
    check_jsonl(eval_file, task)
    files = {eval_split: str(eval_file.resolve())}
    over = {"dataset_path": "json", "dataset_name": None, "training_split": None,
            "validation_split": None, "test_split": eval_split}
    if not fixed:
        fs_file = eval_file.with_name(f"{eval_file.name[:-len('.jsonl')]}.{fs_split}.jsonl")
        if fs_file.is_file() and fs_split != eval_split:
            check_jsonl(fs_file, task)
            files[fs_split] = str(fs_file.resolve())
            over["fewshot_split"] = fs_split
        else:  # same split name as test_split: lm-eval then excludes the scored document
            over["fewshot_split"] = eval_split
    over["dataset_kwargs"] = {"data_files": files}
    return over, files


def _write(path: Path, cfg: dict) -> None:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))


def generate_task_yamls(suite: Suite, tasks: list[SuiteTask], out_dir: Path,
                        data_dir: Optional[Path] = None, strict: bool = False) -> list[GeneratedTask]:
    """Write one YAML per task (groups: one per included subtask plus the group) into ``out_dir``.

    Load them with ``TaskManager(include_path=out_dir, include_defaults=False)``. Raises
    FileNotFoundError naming the task, the expected path and the schema when data are missing.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = Path(data_dir).resolve() if data_dir is not None else None
    if data_dir is not None and not data_dir.is_dir():
        raise FileNotFoundError(f"--data-dir {data_dir} is not a directory")
    generated = []
    for task in tasks:
        name = suite.task_prefix + task.name
        gen = GeneratedTask(task, name)
        if not task.is_group:
            cfg = {"include": str(task.stock_yaml), "task": name, "num_fewshot": task.shots}
            if data_dir is not None:
                f = data_dir / f"{task.name}.jsonl"
                if not f.is_file():
                    raise FileNotFoundError(f"task {task.name}: expected {f} ({_schema_hint(task)})")
                over, files = _data_overrides(read_stock_yaml(task.stock_yaml), f, task)
                cfg.update(over)
                gen.data_files[name] = files
            _write(out_dir / f"{name}.yaml", cfg)
        else:
            subtasks = group_subtasks(task)
            gen.n_subtasks_total = len(subtasks)
            chosen = subtasks
            if data_dir is not None:
                gdir = data_dir / task.name
                stems = {s.stem for s in subtasks}
                present = {p.name[:-len(".jsonl")] for p in gdir.glob("*.jsonl")} if gdir.is_dir() else set()
                unknown = sorted(s for s in present if s.split(".")[0] not in stems)
                if unknown:
                    raise ValueError(f"task {task.name}: unknown subtask file(s) {unknown} in {gdir}; "
                                     f"allowed stems: {sorted(stems)}")
                chosen = [s for s in subtasks if s.stem in present]
                missing = [s.stem for s in subtasks if s.stem not in present]
                if not chosen or (strict and missing):
                    raise FileNotFoundError(
                        f"task {task.name}: expected {gdir}/<subtask>.jsonl for "
                        f"{'all' if strict else 'at least one'} of {missing} ({_schema_hint(task)})")
                if missing:
                    log.warning("task %s: scoring %d of %d subtasks (no file for %s%s)", task.name,
                                len(chosen), len(subtasks), ", ".join(missing[:4]),
                                f" and {len(missing) - 4} more" if len(missing) > 4 else "")
            group_stock = read_stock_yaml(task.stock_yaml)
            members = []
            for sub in chosen:
                sub_name = f"{name}_{sub.stem}"
                cfg = {"include": str(sub.yaml_path), "task": sub_name, "num_fewshot": task.shots,
                       "tag": []}  # drop stock tags: they would group our copies with unrelated tasks
                if data_dir is not None:
                    over, files = _data_overrides(sub.config, data_dir / task.name / f"{sub.stem}.jsonl", task)
                    cfg.update(over)
                    gen.data_files[sub_name] = files
                _write(out_dir / f"{sub_name}.yaml", cfg)
                members.append(sub_name)
                gen.subtasks.append(sub.stem)
            group_cfg = {"group": name, "task": members,
                         "aggregate_metric_list": group_stock.get("aggregate_metric_list"),
                         "metadata": group_stock.get("metadata", {})}
            _write(out_dir / f"_{name}.yaml", group_cfg)
        generated.append(gen)
    return generated
