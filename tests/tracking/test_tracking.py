"""Store location, flattened params, tags, and the resume high-water mark of the logger."""
import pytest

from mhc_repro.tracking.runinfo import environment, flatten, record_environment, train_tags
from mhc_repro.tracking.store import default_tracking_uri, repo_root, resolve_tracking_uri


def test_default_store_is_absolute_sqlite_under_repo(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = resolve_tracking_uri()
    assert uri == default_tracking_uri() == f"sqlite:///{repo_root() / 'mlruns' / 'mlflow.db'}"
    assert uri.startswith("sqlite:////")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri() == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("sqlite:////tmp/x/mlflow.db") == "sqlite:////tmp/x/mlflow.db"


def test_flatten_and_tags():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}
    cfg = {"train": {"variant": "hc", "preset": "tiny", "seed": 3, "ablation": "res"},
           "tracking": {"study": "tiny", "tags": {"who": "me"}}}
    tags = train_tags(cfg, run_dir="/r", commit="abc", env={"torch": "2.x", "aten_cpu_capability": "AVX2"})
    env = {k: tags.pop(k) for k in list(tags) if k.startswith("env.")}
    assert env == {"env.torch": "2.x", "env.aten_cpu_capability": "AVX2"}
    assert tags == {"run_kind": "train", "variant": "hc", "preset": "tiny", "seed": "3", "git_commit": "abc",
                    "paper": "arXiv:2512.24880", "run_dir": "/r", "study": "tiny", "ablation": "res", "who": "me"}
    cfg["train"]["variant"] = "residual"
    assert "ablation" not in train_tags(cfg, run_dir="/r", commit="abc")


def test_environment_says_what_decides_the_numbers(tmp_path):
    import json

    import torch

    env = environment()
    assert env["torch"] == torch.__version__
    assert env["aten_cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # decides CPU rounding
    assert env["cuda_devices"] == (f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
                                   if torch.cuda.is_available() else "none")
    assert all(isinstance(v, str) and v for v in env.values()), env
    # one line per launch, appended: a resumed run keeps the first launch's line
    assert record_environment(tmp_path, "abc") == env
    record_environment(tmp_path, "def")
    lines = [json.loads(x) for x in (tmp_path / "environment.jsonl").read_text().splitlines()]
    assert [x["git_commit"] for x in lines] == ["abc", "def"]
    assert lines[1]["torch"] == torch.__version__ and lines[0]["started"]


def test_logger_drops_points_already_stored(tmp_path):
    from mlflow.tracking import MlflowClient

    from mhc_repro.tracking.logger import ResumableMLFlowLogger

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e", artifact_location=str(tmp_path / "a"))).info.run_id
    first = ResumableMLFlowLogger(experiment_name="e", tracking_uri=uri, run_id=run_id)
    for step in (1, 2, 3):
        first.log_metrics({"train/loss": float(step)}, step=step)
    again = ResumableMLFlowLogger(experiment_name="e", tracking_uri=uri, run_id=run_id)
    assert again.load_high_water() == {"train/loss": 3}
    for step in (2, 3, 4):  # replayed steps 2, 3 after a resume from step 1
        again.log_metrics({"train/loss": float(step), "val/loss": 0.5}, step=step)
    hist = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "train/loss"))
    assert hist == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0)]
    assert [m.step for m in client.get_metric_history(run_id, "val/loss")] == [2, 3, 4]
