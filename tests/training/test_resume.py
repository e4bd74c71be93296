"""kill -9 mid-run, rerun the same command: same final loss as an uninterrupted run, and an MLflow
history with every step exactly once."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mhc_repro.training.compose import build_config
from mhc_repro.training.run import train

from .conftest import micro_overrides

REPO = Path(__file__).resolve().parents[2]
STEPS, KILL_AT = 8, 5  # checkpoints every 3 steps: killed after step 5's metrics, resumes from step 3

KILLER = textwrap.dedent("""
    import os, signal, sys
    import lightning as L
    from mhc_repro.training import run
    from mhc_repro.training.compose import build_config

    class Kill(L.Callback):  # SIGKILL ourselves after step K has been fully logged
        def on_train_batch_end(self, trainer, *a):
            if trainer.global_step == int(os.environ["KILL_AT"]):
                os.kill(os.getpid(), signal.SIGKILL)

    Base = run.StepCheckpoint
    class StepCheckpointThenKill(Base):
        def on_train_batch_end(self, trainer, *a):
            super().on_train_batch_end(trainer, *a)
            Kill().on_train_batch_end(trainer, *a)
    run.StepCheckpoint = StepCheckpointThenKill
    run.train(build_config([], sys.argv[1:], env={}))
""")


def _history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))]


def test_kill9_then_rerun_resumes_exactly(tmp_path, corpus_dir, data_cache):
    from mlflow.tracking import MlflowClient

    extra = {"train.max_steps": STEPS, "train.global_batch_size": 8}  # 2 micro-batches per step
    ref_over = micro_overrides(tmp_path / "ref", corpus_dir, data_cache, **extra)
    ref = train(build_config([], ref_over, env={}))

    over = micro_overrides(tmp_path / "kill", corpus_dir, data_cache, **extra)
    env = {**os.environ, "PYTHONPATH": str(REPO), "KILL_AT": str(KILL_AT)}
    proc = subprocess.run([sys.executable, "-c", KILLER, *over], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    run_dir = tmp_path / "kill" / "runs" / "test" / "mhc-s0"
    assert not (run_dir / "finished.json").exists()
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt")) == ["step0000003.ckpt"]
    run_id = (run_dir / "mlflow_run_id.txt").read_text().strip()

    resumed = train(build_config([], over, env={}))  # the same command again
    assert resumed["resumed_from"].endswith("step0000003.ckpt")
    assert resumed["mlflow_run_id"] == run_id
    assert resumed["final_train_loss"] == ref["final_train_loss"]
    assert resumed["final_val_loss"] == ref["final_val_loss"]

    client = MlflowClient(build_config([], over, env={}).tracking.tracking_uri)
    ref_client = MlflowClient(build_config([], ref_over, env={}).tracking.tracking_uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    for key, steps in (("train/loss", range(1, STEPS + 1)), ("train/grad_norm", range(1, STEPS + 1)),
                       ("train/tokens", range(1, STEPS + 1)), ("val/loss", range(2, STEPS + 1, 2))):
        hist = _history(client, run_id, key)
        assert [s for s, _ in hist] == list(steps), (key, hist)
        # the whole curve equals the uninterrupted run's
        assert hist == _history(ref_client, ref["mlflow_run_id"], key), key
    json.loads((run_dir / "finished.json").read_text())
    # each launch appended its environment: the killed one and the resume
    assert len((run_dir / "environment.jsonl").read_text().splitlines()) == 2


def test_exception_checkpoint_resumes_exactly(tmp_path, corpus_dir, data_cache, monkeypatch):
    """An exception inside step 5 saves step0000004-exception.ckpt (data position rewound to the step
    boundary); rerunning resumes from it and ends with the uninterrupted run's loss."""
    import lightning as L
    import pytest

    from mhc_repro.training import run as run_mod

    extra = {"train.max_steps": 6, "train.ckpt_every": 100, "train.variant": "residual", "train.amax_every": 0}
    ref = train(build_config([], micro_overrides(tmp_path / "ref", corpus_dir, data_cache, **extra), env={}))

    class Boom(L.Callback):
        def on_train_batch_start(self, trainer, *a):
            if trainer.global_step == 4:
                raise RuntimeError("boom")

    Base = run_mod.StepEnd

    class StepEndBoom(Base):  # the failure happens after the step-5 micro-batch was handed out
        def on_train_batch_start(self, trainer, *a):
            super().on_train_batch_start(trainer, *a)
            Boom().on_train_batch_start(trainer, *a)

    over = micro_overrides(tmp_path / "exc", corpus_dir, data_cache, **extra)
    monkeypatch.setattr(run_mod, "StepEnd", StepEndBoom)
    with pytest.raises(RuntimeError, match="boom"):
        train(build_config([], over, env={}))
    monkeypatch.setattr(run_mod, "StepEnd", Base)
    ckpts = sorted(p.name for p in (tmp_path / "exc" / "runs" / "test" / "residual-s0" / "checkpoints").glob("*.ckpt"))
    assert ckpts == ["step0000004-exception.ckpt"]
    resumed = train(build_config([], over, env={}))
    assert resumed["resumed_from"].endswith("step0000004-exception.ckpt")
    assert resumed["final_train_loss"] == ref["final_train_loss"]


def test_resume_check_ignores_only_the_free_keys():
    """A rerun may change how the math is executed (kernels, MoE dispatch and shuffle), not the math."""
    from mhc_repro.training.run import _first_difference

    saved = {"model": {"d_model": 64, "moe": {"shuffle": "index_add", "dispatch": "auto"},
                       "residual": {"backend": "auto"}}}
    now = {"model": {"d_model": 64, "moe": {"shuffle": "gather", "dispatch": "bmm"},
                     "residual": {"backend": "reference"}}}
    assert _first_difference(saved, now) is None
    now["model"]["d_model"] = 128
    assert _first_difference(saved, now) == "model.d_model: 64 (run dir) vs 128 (now)"
    cadence = {k: 50 for k in ("ckpt_every", "log_every", "val_every", "amax_every")}
    assert _first_difference({"train": {**cadence, "lr": 1e-3}},  # e.g. checkpoint more often after a preemption
                             {"train": {**{k: 10 for k in cadence}, "lr": 1e-3}}) is None
    assert _first_difference({"train": {"lr": 1e-3}}, {"train": {"lr": 2e-3}}) == "train.lr: 0.001 (run dir) vs 0.002 (now)"


def test_resume_into_another_tracking_store_is_refused(tmp_path, corpus_dir, data_cache):
    """A rerun that forgot the first launch's MLFLOW_TRACKING_URI used to open a fresh MLflow run in the
    other store holding only the steps after the checkpoint, and overwrite mlflow_run_id.txt (the link to
    the run holding the earlier steps). Now: a one-line error, and nothing in the run directory changes."""
    import pytest

    extra = {"train.max_steps": 4, "train.ckpt_every": 2, "train.variant": "residual", "train.amax_every": 0}
    over = micro_overrides(tmp_path, corpus_dir, data_cache, **extra)
    train(build_config([], over, env={}))
    run_dir = tmp_path / "runs" / "test" / "residual-s0"
    (run_dir / "finished.json").unlink()  # as if killed after the step-4 checkpoint
    run_id = (run_dir / "mlflow_run_id.txt").read_text()
    other = over + [f"tracking.tracking_uri=sqlite:///{tmp_path / 'other' / 'mlflow.db'}"]  # a resume-free key
    with pytest.raises(ValueError, match=r"resumes from a checkpoint but its MLflow run \w+ is not in the "
                                         r"tracking store .*other/mlflow.db") as e:
        train(build_config([], other, env={}))
    assert "\n" not in str(e.value)
    assert (run_dir / "mlflow_run_id.txt").read_text() == run_id
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt")) == ["step0000004.ckpt"]


def _ckpt_loops(ready: int, completed: int, global_batch: int) -> dict:
    counts = {"ready": ready, "started": ready, "processed": ready, "completed": completed}
    return {"loops": {"fit_loop": {
        "state_dict": {"combined_loader": [{"epoch": 0, "consumed": ready * global_batch, "global_batch": global_batch}]},
        "epoch_loop.batch_progress": {"current": dict(counts), "total": dict(counts), "is_last_batch": False}}}}


def test_resume_on_another_world_size_rescales_the_micro_batch_counters():
    """train.devices / num_nodes may change on resume; Lightning's micro-batch counters (which decide where an
    accumulation ends) must follow the new micro global batch, or the first step after resume is partial."""
    from mhc_repro.training.module import rescale_batch_progress

    # saved by 2 processes x batch 4 (8 sequences per micro-batch) at step 3 with accumulation 2, in
    # on_train_batch_end (completed trails ready by the batch in flight)
    ck = _ckpt_loops(ready=6, completed=5, global_batch=8)
    rescale_batch_progress(ck, 4)  # resumed on 1 process: accumulation 4
    cur = ck["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
    assert cur == {"ready": 12, "started": 12, "processed": 12, "completed": 11}
    assert (cur["completed"] + 1) % 4 == 0  # Lightning adds the in-flight batch: a step boundary again
    ck = _ckpt_loops(ready=12, completed=11, global_batch=4)
    rescale_batch_progress(ck, 8)  # 1 -> 2 processes
    assert ck["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["ready"] == 6
    same = _ckpt_loops(ready=6, completed=5, global_batch=8)
    rescale_batch_progress(same, 8)  # same world size: untouched
    assert same == _ckpt_loops(ready=6, completed=5, global_batch=8)
    with pytest.raises(ValueError, match="not a whole number of micro-batches"):
        rescale_batch_progress(_ckpt_loops(ready=3, completed=2, global_batch=4), 8)
