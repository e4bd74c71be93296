"""Which runs a report uses: reruns, unfinished reruns, and runs trained with different settings."""

import math

from reporting_fixtures import make_study

from mhc_repro.reporting.collect import (COMPARISON_FREE_KEYS, COMPARISON_FREE_PREFIXES, config_differences,
                                         load_study)


def _store(root, runs):
    """runs: (variant, seed, status, start offset, final val loss, {param: value}) -> tracking URI."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("rerun", artifact_location=str(root / "artifacts"))
    ids, t0 = [], 1_700_000_000_000
    for variant, seed, status, start, loss, params in runs:
        tags = {"run_kind": "train", "variant": variant, "preset": "tiny", "seed": str(seed)}
        rid = client.create_run(exp, start_time=t0 + start, tags=tags).info.run_id
        client.log_batch(rid, metrics=[Metric("val/loss", loss, t0 + start, 10)],
                         params=[Param(k, str(v)) for k, v in {"train.lr": 0.003, **params}.items()])
        client.set_terminated(rid, status=status)
        ids.append(rid)
    return uri, ids


def test_unfinished_rerun_does_not_replace_a_finished_run(tmp_path):
    uri, (base, done, crashed, running) = _store(tmp_path, [
        ("residual", 0, "FINISHED", 0, 3.0, {}),
        ("mhc", 0, "FINISHED", 1, 2.9, {}),
        ("mhc", 0, "FAILED", 2, math.nan, {"train.lr": 1e12}),  # a later rerun that diverged at once
        ("residual", 0, "RUNNING", 3, 3.5, {}),                  # a later rerun still in progress
    ])
    study = load_study("rerun", uri)
    assert sorted(study.runs.run_id) == sorted([base, done])
    assert sorted(study.superseded) == sorted([crashed, running])
    assert list(study.runs.final_val_loss) == [3.0, 2.9]


def test_a_finished_rerun_still_supersedes(tmp_path):
    uri, (old, new, _) = _store(tmp_path, [
        ("mhc", 0, "FINISHED", 0, 2.9, {}), ("mhc", 0, "FINISHED", 1, 2.8, {}),
        ("residual", 0, "FINISHED", 2, 3.0, {})])
    study = load_study("rerun", uri)
    assert new in set(study.runs.run_id) and study.superseded == [old]


def test_config_differences_name_what_is_not_like_for_like(tmp_path):
    uri, _ = _store(tmp_path, [
        ("residual", 0, "FINISHED", 0, 3.0, {"train.seed": 0, "train.max_steps": 30, "train.variant": "residual",
                                             "model.residual.kind": "residual", "train.out_dir": "/a"}),
        ("mhc", 0, "FINISHED", 1, 2.9, {"train.lr": 0.001, "train.seed": 0, "train.max_steps": 30,
                                        "train.variant": "mhc", "model.residual.kind": "mhc",
                                        "train.out_dir": "/b"}),
        ("mhc", 1, "FINISHED", 2, 2.9, {"train.seed": 1, "train.max_steps": 60, "train.variant": "mhc",
                                        "model.residual.kind": "mhc", "train.out_dir": "/a"}),
    ])
    study = load_study("rerun", uri)
    assert config_differences(study, "tiny") == {"train.lr": ["0.001", "0.003"], "train.max_steps": ["30", "60"]}
    assert config_differences(make_study({"residual": [3.0], "mhc": [2.9]}), "tiny") == {}  # no params logged


def test_keys_free_on_resume_are_free_in_comparisons():
    from mhc_repro.training.run import RESUME_FREE_KEYS

    assert all(k in COMPARISON_FREE_KEYS or k.startswith(COMPARISON_FREE_PREFIXES) for k in RESUME_FREE_KEYS)


def test_the_report_scores_a_full_eval_of_the_last_checkpoint_over_later_quick_checks(tmp_path):
    """A later --limit run, or a later eval of an earlier checkpoint, does not replace the full score of
    the final checkpoint; among full evals of the same checkpoint the latest wins."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri, (train,) = _store(tmp_path, [("mhc", 0, "FINISHED", 0, 2.9, {})])
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("rerun").experiment_id
    t0 = 1_700_000_100_000
    for i, (score, limit, ckpt) in enumerate([
            (0.50, "none", "runs/x/checkpoints/step0000100.ckpt"),   # the real score
            (0.40, "none", "runs/x/checkpoints/step0000100.ckpt"),   # rescored later: supersedes 0.50
            (0.90, "3", "runs/x/checkpoints/step0000100.ckpt"),      # quick check on 3 rows
            (0.80, "none", "runs/x/checkpoints/step0000050.ckpt"),   # an earlier checkpoint, evaluated last
    ]):
        rid = client.create_run(exp, start_time=t0 + i, tags={"run_kind": "eval", "train_run_id": train}).info.run_id
        client.log_batch(rid, metrics=[Metric("eval/piqa", score, t0 + i, 0)],
                         params=[Param("eval.limit", limit), Param("eval.checkpoint", ckpt)])
        client.set_terminated(rid, status="FINISHED")
    evals = load_study("rerun", uri).evals
    assert list(evals.score) == [0.40] and list(evals.limit) == ["none"]
