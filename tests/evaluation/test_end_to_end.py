"""All eight tasks offline on the fixtures through `mhc-repro eval`, from a run directory (DESIGN.md
checkpoint format) to an MLflow child run of the training run, with the paper's shots."""

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from mhc_repro.cli import main as cli_main

from .conftest import FIXTURES
from .standin import real_lm
from .test_offline import PAPER


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory, tokenizer):
    """A tiny mHC run directory (random weights) whose training run exists in a fresh MLflow store."""
    root = tmp_path_factory.mktemp("e2e")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("tiny", artifact_location=str(root / "artifacts"))
    train = client.create_run(exp, run_name="mhc-s0", tags={"run_kind": "train", "variant": "mhc",
                                                             "preset": "tiny", "seed": "0"})
    client.set_terminated(train.info.run_id, "FINISHED")
    model = real_lm("tiny", "mhc", tokenizer.get_vocab_size())
    run_dir = root / "runs" / "tiny" / "mhc-s0"
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"config": {"model": model.cfg.to_dict()}}},
               run_dir / "checkpoints" / "step0000010.ckpt")
    tokenizer.save(str(run_dir / "tokenizer.json"))
    (run_dir / "mlflow_run_id.txt").write_text(train.info.run_id + "\n")
    return uri, run_dir, train.info.run_id


def test_all_eight_tasks_offline_into_mlflow(tracked_run, monkeypatch, tmp_path):
    uri, run_dir, train_id = tracked_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = tmp_path / "scores.json"
    rc = cli_main(["eval", "--run", str(run_dir), "--data-dir", str(FIXTURES), "--device", "cpu",
                   "--batch-size", "16", "--max-gen-toks-cap", "8", "--output", str(out)])
    assert rc == 0
    (summary,) = json.loads(out.read_text())
    assert set(summary["scores"]) == set(PAPER)
    assert summary["shots"] == {t: shots for t, (_, shots) in PAPER.items()}

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_run(train_id).info.experiment_id], "tags.run_kind = 'eval'")
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tags["mlflow.parentRunId"] == tags["train_run_id"] == train_id
    assert tags["env.torch"] and tags["env.aten_cpu_capability"]  # what the scores were computed on
    assert (tags["variant"], tags["preset"], tags["seed"]) == ("mhc", "tiny", "0")
    for task, (_, shots) in PAPER.items():
        assert 0.0 <= metrics[f"eval/{task}"] <= 1.0
        assert params[f"eval.shots.{task}"] == str(shots)
        assert params[f"eval.task_version.{task}"] not in ("", "None")
    assert metrics["eval/hellaswag/acc_none"] == metrics["eval/hellaswag"]
    assert "eval/bbh/exact_match_get-answer" in metrics and not any("," in k for k in metrics)
    assert params["eval.batch_size"] == "16" and params["lm_eval.version"] == "0.4.13"
    assert params["eval.coverage.mmlu"] == "2/57" and params["eval.max_gen_toks_cap"] == "8"

    art = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert art == {"eval/results.json"} | {f"eval/samples_{t}.jsonl" for t in PAPER}
    local = client.download_artifacts(run.info.run_id, "eval", str(tmp_path))
    results = json.loads(open(f"{local}/results.json").read())
    assert results["lm_eval"]["n-shot"]["mhc_mmlu_anatomy"] == 5
    samples = [json.loads(line) for line in open(f"{local}/samples_bbh.jsonl")]
    assert len(samples) == 12 and {s["subtask"] for s in samples} == {
        "mhc_bbh_boolean_expressions", "mhc_bbh_date_understanding", "mhc_bbh_word_sorting"}


def test_run_resolution_by_dir_checkpoint_and_mlflow_id(tracked_run, monkeypatch):
    from mhc_repro.evaluation.cli import resolve_target, study_targets

    uri, run_dir, train_id = tracked_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    ckpt = run_dir / "checkpoints" / "step0000010.ckpt"
    assert resolve_target(str(run_dir)).train_run_id == train_id
    assert resolve_target(str(ckpt)).train_run_id == train_id
    client = MlflowClient(tracking_uri=uri)
    with pytest.raises(FileNotFoundError, match="no existing checkpoint_path/run_dir"):
        resolve_target(train_id)
    client.set_tag(train_id, "checkpoint_path", str(ckpt))
    assert resolve_target(train_id).checkpoint == str(ckpt)
    assert [t.train_run_id for t in study_targets("tiny")] == [train_id]
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        resolve_target("no/such/run")


def test_cli_bad_input_is_one_line(capsys):
    assert cli_main(["eval", "--run", "x", "--tasks", "bbh,arc", "--no-mlflow"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown task(s) ['arc']" in err


def _one_line_error(capsys, fragment):
    err = capsys.readouterr().err.strip()  # (MLflow may log its own INFO line first on a new store)
    last = err.splitlines()[-1]
    assert "Traceback" not in err and last.startswith("mhc-repro eval: error:") and fragment in last, err


def test_unusable_device_or_unknown_run_id_is_one_line(tracked_run, monkeypatch, capsys):
    uri, run_dir, _ = tracked_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    base = ["eval", "--run", str(run_dir), "--tasks", "piqa", "--data-dir", str(FIXTURES), "--no-mlflow"]
    assert cli_main(base + ["--device", "bogus"]) == 2
    _one_line_error(capsys, "--device bogus: not a torch device")
    if not torch.cuda.is_available():
        assert cli_main(base + ["--device", "cuda"]) == 2
        _one_line_error(capsys, "CUDA is not available")
    assert cli_main(["eval", "--run", "0" * 32, "--tasks", "piqa", "--no-mlflow"]) == 2
    _one_line_error(capsys, "no such MLflow run")


def test_training_run_missing_from_the_store_fails_before_scoring(tracked_run, monkeypatch, tmp_path, capsys):
    """A run directory whose training run is not in the configured store used to be scored in full and
    then crash with a traceback while logging, printing and saving nothing."""
    _, run_dir, train_id = tracked_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")
    import mhc_repro.evaluation.runner as runner

    monkeypatch.setattr(runner, "evaluate_suite", lambda *a, **k: pytest.fail("scored before the store check"))
    rc = cli_main(["eval", "--run", str(run_dir), "--tasks", "piqa", "--data-dir", str(FIXTURES), "--device", "cpu"])
    assert rc == 2
    _one_line_error(capsys, f"training run {train_id} is not in the MLflow store")


def test_scores_are_kept_when_mlflow_logging_fails(tracked_run, monkeypatch, tmp_path, capsys):
    uri, run_dir, _ = tracked_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(FIXTURES.parent)  # a relative --data-dir
    import mhc_repro.evaluation.mlflow_log as mlflow_log

    seen = {}

    def failing_log(result, **kwargs):
        seen["data"] = result.data_dir
        raise RuntimeError("tracking server went away")

    monkeypatch.setattr(mlflow_log, "log_eval", failing_log)
    out = tmp_path / "scores.json"
    with pytest.raises(RuntimeError, match="went away"):
        cli_main(["eval", "--run", str(run_dir), "--tasks", "piqa", "--data-dir", FIXTURES.name, "--limit", "2",
                  "--device", "cpu", "--output", str(out)])
    assert "piqa" in capsys.readouterr().out  # printed before logging
    (summary,) = json.loads(out.read_text())
    assert set(summary["scores"]) == {"piqa"} and summary["eval_run_id"] is None
    assert seen["data"] == str(FIXTURES)  # logged absolute, not relative to the CWD


def test_hub_unreachable_is_one_line(tracked_run, capsys):
    _, run_dir, _ = tracked_run
    assert cli_main(["eval", "--run", str(run_dir), "--tasks", "piqa", "--device", "cpu", "--no-mlflow"]) == 2
    _one_line_error(capsys, "pass --data-dir DIR")


def test_study_eval_skips_checkpoints_already_scored_the_same_way(tracked_run, monkeypatch, capsys):
    """`eval --study` (what `make reproduce` reruns) does not score a checkpoint again with the same
    tasks, limit, data and cap; other settings, or --rescore, do."""
    uri, run_dir, train_id = tracked_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri)
    client.set_tag(train_id, "checkpoint_path", str(run_dir / "checkpoints" / "step0000010.ckpt"))
    exp = client.get_run(train_id).info.experiment_id

    def evals():
        return len(client.search_runs([exp], "tags.run_kind = 'eval'"))

    base = ["eval", "--study", "tiny", "--tasks", "piqa", "--data-dir", str(FIXTURES), "--device", "cpu",
            "--limit", "2"]
    before = evals()
    assert cli_main(base) == 0 and evals() == before + 1
    assert cli_main(base) == 0 and evals() == before + 1
    assert "already scored in eval run" in capsys.readouterr().out
    assert cli_main(base[:-1] + ["3"]) == 0 and evals() == before + 2  # another limit: scored
    assert cli_main(base + ["--rescore"]) == 0 and evals() == before + 3
