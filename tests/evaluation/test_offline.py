"""The suite file, the fixtures' schemas, and the generated offline task YAMLs (no model involved)."""

import json

import pytest
import yaml

from mhc_repro.evaluation.offline import generate_task_yamls
from mhc_repro.evaluation.suite import group_subtasks, load_suite

from .conftest import FIXTURES

# PAPER.md §4, Table 4: metric and shots per benchmark.
PAPER = {"bbh": ("EM", 3), "drop": ("F1", 3), "gsm8k": ("EM", 8), "hellaswag": ("Acc.", 10),
         "math": ("EM", 4), "mmlu": ("Acc.", 5), "piqa": ("Acc.", 0), "triviaqa": ("EM", 5)}


@pytest.fixture(scope="module")
def suite():
    return load_suite()


def test_suite_is_the_papers_table(suite):
    assert {n: (t.metric, t.shots) for n, t in suite.tasks.items()} == PAPER
    assert suite.tasks["gsm8k"].lm_eval_task == "gsm8k_cot" and suite.tasks["math"].lm_eval_task == "minerva_math"
    assert [len(group_subtasks(suite.tasks[g])) for g in ("bbh", "math", "mmlu")] == [27, 7, 57]
    with pytest.raises(ValueError, match="unknown task.*allowed"):
        suite.select(["bbh", "arc"])


def test_fixtures_use_each_datasets_columns(suite):
    for task in suite.tasks.values():
        files = sorted((FIXTURES / task.name).glob("*.jsonl")) if task.is_group else [FIXTURES / f"{task.name}.jsonl"]
        rows = [json.loads(line) for f in files for line in f.read_text().splitlines()]
        assert len(rows) >= 12, task.name
        assert all(sorted(r) == sorted(task.columns) for r in rows), task.name


def test_offline_yamls_include_stock_and_point_at_absolute_files(suite, tmp_path):
    gen = {g.suite_task.name: g for g in generate_task_yamls(suite, suite.select(), tmp_path, data_dir=FIXTURES)}
    hs = yaml.safe_load((tmp_path / "mhc_hellaswag.yaml").read_text())
    assert hs["include"] == str(suite.tasks["hellaswag"].stock_yaml) and hs["num_fewshot"] == 10
    assert hs["dataset_path"] == "json" and hs["test_split"] == hs["fewshot_split"] == "validation"
    assert hs["dataset_kwargs"]["data_files"] == {"validation": str(FIXTURES / "hellaswag.jsonl")}
    anatomy = yaml.safe_load((tmp_path / "mhc_mmlu_anatomy.yaml").read_text())
    assert anatomy["fewshot_split"] == "dev"  # the optional few-shot file was picked up
    assert anatomy["dataset_kwargs"]["data_files"]["dev"] == str(FIXTURES / "mmlu" / "anatomy.dev.jsonl")
    gsm = yaml.safe_load((tmp_path / "mhc_gsm8k.yaml").read_text())
    assert "fewshot_split" not in gsm  # fixed CoT exemplars from the stock YAML
    group = yaml.safe_load((tmp_path / "_mhc_bbh.yaml").read_text())
    assert group["task"] == ["mhc_bbh_boolean_expressions", "mhc_bbh_date_understanding", "mhc_bbh_word_sorting"]
    assert group["aggregate_metric_list"][0]["filter_list"] == "get-answer"
    assert gen["bbh"].coverage == "3/27" and gen["piqa"].coverage == "1/1"


def test_hub_mode_sets_shots_on_every_stock_subtask(suite, tmp_path):
    generate_task_yamls(suite, suite.select(["mmlu", "drop"]), tmp_path)
    assert len(yaml.safe_load((tmp_path / "_mhc_mmlu.yaml").read_text())["task"]) == 57
    drop = yaml.safe_load((tmp_path / "mhc_drop.yaml").read_text())
    assert drop == {"include": str(suite.tasks["drop"].stock_yaml), "task": "mhc_drop", "num_fewshot": 3}


def test_missing_data_errors_name_task_path_and_schema(suite, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(FileNotFoundError) as err:
        generate_task_yamls(suite, suite.select(["piqa"]), tmp_path / "a", data_dir=data)
    msg = str(err.value)
    assert "task piqa" in msg and str(data / "piqa.jsonl") in msg and "['goal', 'sol1', 'sol2', 'label']" in msg
    with pytest.raises(FileNotFoundError, match=r"task mmlu: expected .*/mmlu/<subtask>.jsonl.*'question'"):
        generate_task_yamls(suite, suite.select(["mmlu"]), tmp_path / "b", data_dir=data)
    (data / "bbh").mkdir()
    (data / "bbh" / "boolean_expressions.jsonl").write_text('{"input": "True is", "target": "True"}\n')
    with pytest.raises(FileNotFoundError, match="all of"):
        generate_task_yamls(suite, suite.select(["bbh"]), tmp_path / "c", data_dir=data, strict=True)
    (data / "bbh" / "boolean_expresions.jsonl").write_text("")
    with pytest.raises(ValueError, match="unknown subtask file.*boolean_expresions"):
        generate_task_yamls(suite, suite.select(["bbh"]), tmp_path / "d", data_dir=data)


@pytest.mark.parametrize("content, match", [
    ('{"question": "x", "sol1": "a", "sol2": "b", "label": 0}\n', r"piqa\.jsonl:1: missing column\(s\) \['goal'\]"),
    ('{"goal": "x", "sol1": "a"\n', r"piqa\.jsonl:1: not valid JSON"),
    ('["goal", "sol1", "sol2", "label"]\n', r"piqa\.jsonl:1: a JSON list, not an object"),
    ("\n", r"piqa\.jsonl holds no rows"),
])
def test_bad_data_file_is_a_clear_error_before_lm_eval(suite, tmp_path, content, match):
    data = tmp_path / "data"
    data.mkdir()
    (data / "piqa.jsonl").write_text(content)
    with pytest.raises(ValueError, match=match):
        generate_task_yamls(suite, suite.select(["piqa"]), tmp_path / "out", data_dir=data)


def test_bad_few_shot_and_subtask_files_are_checked(suite, tmp_path):
    data = tmp_path / "data"
    (data / "mmlu").mkdir(parents=True)
    (data / "mmlu" / "anatomy.jsonl").write_text((FIXTURES / "mmlu" / "anatomy.jsonl").read_text())
    (data / "mmlu" / "anatomy.dev.jsonl").write_text('{"question": "q", "choices": ["a"], "answer": 0}\n')
    with pytest.raises(ValueError, match=r"mmlu: .*anatomy\.dev\.jsonl:1: missing column\(s\) \['subject'\]"):
        generate_task_yamls(suite, suite.select(["mmlu"]), tmp_path / "out", data_dir=data)
