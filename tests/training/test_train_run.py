"""End-to-end micro runs on CPU: a finished run, the finished-run guard, the non-finite-loss stop."""
import json
import math

import pytest
import torch

from mhc_repro.training.compose import build_config
from mhc_repro.training.module import NonFiniteLossError
from mhc_repro.training.run import RunFinishedError, train

from .conftest import micro_overrides


def test_micro_run_logs_everything(tmp_path, corpus_dir, data_cache):
    from mlflow.tracking import MlflowClient

    cfg = build_config([], micro_overrides(tmp_path, corpus_dir, data_cache), env={})
    s = train(cfg)
    run_dir = tmp_path / "runs" / "test" / "mhc-s0"
    assert s["steps"] == 8 and math.isfinite(s["final_train_loss"]) and math.isfinite(s["final_val_loss"])
    for name in ("config.yaml", "tokenizer.json", "mlflow_run_id.txt", "finished.json"):
        assert (run_dir / name).exists(), name
    assert (run_dir / "diagnostics" / "amax_step0000008.json").exists()
    amax = json.loads((run_dir / "diagnostics" / "amax_step0000004.json").read_text())
    assert len(amax["fwd_single"]) == 4 and abs(amax["fwd_single"][0] - 1) < 1e-5  # 2 blocks; rows exact

    client = MlflowClient(cfg.tracking.tracking_uri)
    run = client.get_run(s["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    for key, want in (("run_kind", "train"), ("variant", "mhc"), ("preset", "tiny"), ("seed", "0"),
                      ("ablation", "full"), ("paper", "arXiv:2512.24880"), ("study", "test")):
        assert tags[key] == want, key
    assert tags["checkpoint_path"].endswith("step0000008.ckpt") and tags["git_commit"]
    import torch

    assert tags["env.torch"] == torch.__version__ and tags["env.aten_cpu_capability"]
    assert len((run_dir / "environment.jsonl").read_text().splitlines()) == 1
    assert "environment.jsonl" in [f.path for f in client.list_artifacts(run.info.run_id)]
    params = run.data.params
    assert params["train.lr"] == "0.003" and params["model.residual.kind"] == "mhc"
    assert int(params["model.params_total"]) > 0
    from mhc_repro.kernels import launch

    # the fused kernels' switches are logged with the run (they decide its summation orders)
    assert params["kernels.PROJ_DX_TMA_DPHI"] == str(launch.PROJ_DX_TMA_DPHI)
    assert params["kernels._PROJ_BWD_TMA"] == str(launch._PROJ_BWD_TMA) and "kernels.linked.LINK_MODE" in params
    for key in ("train/loss", "train/ppl", "train/grad_norm", "train/lr", "train/tokens", "val/loss",
                "amax/fwd_composite_max", "amax/bwd_single_max", "amax/log_colsum_max", "perf/tokens_per_sec"):
        assert key in run.data.metrics, key
    tokens = [m.value for m in client.get_metric_history(run.info.run_id, "train/tokens")]
    assert tokens == [4 * 32 * k for k in range(1, 9)]
    arts = {a.path for a in client.list_artifacts(run.info.run_id, "diagnostics")}
    assert "diagnostics/amax_step0000004.png" in arts and "diagnostics/amax_step0000004.json" in arts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "config")} == {"config/config.yaml"}
    assert {a.path for a in client.list_artifacts(run.info.run_id, "data")} == {"data/data_manifest.json"}

    # the evaluation contract: load_lm on the run directory
    from mhc_repro.training.checkpoint import load_lm

    model, mcfg, tok = load_lm(run_dir)
    assert mcfg.d_model == 32 and tok.get_vocab_size() == 320
    assert model(torch.zeros(1, 5, dtype=torch.long)).shape == (1, 5, 320)

    with pytest.raises(RunFinishedError, match="already holds a finished run"):
        train(build_config([], micro_overrides(tmp_path, corpus_dir, data_cache), env={}))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, corpus_dir, data_cache):
    from mlflow.tracking import MlflowClient

    over = micro_overrides(tmp_path, corpus_dir, data_cache, **{
        "train.lr": 1e30, "train.warmup_steps": 0, "train.grad_clip": 0, "train.ckpt_every": 1,
        "train.variant": "residual"})
    cfg = build_config([], over, env={})
    with pytest.raises(NonFiniteLossError, match=r"non-finite .* at step \d+.*last good checkpoint: .*step\d{7}\.ckpt"):
        train(cfg)
    run_dir = tmp_path / "runs" / "test" / "residual-s0"
    assert not (run_dir / "finished.json").exists()
    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    assert ckpts and not any("exception" in p.name for p in ckpts)
    state = torch.load(ckpts[-1], map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    run_id = (run_dir / "mlflow_run_id.txt").read_text().strip()
    run = MlflowClient(cfg.tracking.tracking_uri).get_run(run_id)
    assert run.info.status == "FAILED" and "non-finite" in run.data.tags["stop_reason"]


def _fake_finished_run(cfg) -> None:
    """A run directory as a finished run of ``cfg`` leaves it (no training needed for the guards)."""
    import yaml

    from mhc_repro.training.run import run_dir_of

    run_dir = run_dir_of(cfg)
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (run_dir / "finished.json").write_text("{}")


def test_finished_run_of_another_config_is_an_error_not_a_skip(tmp_path, corpus_dir, data_cache):
    from mhc_repro.training.run import check_run_dir

    over = micro_overrides(tmp_path, corpus_dir, data_cache, **{"train.variant": "residual"})
    _fake_finished_run(build_config([], over, env={}))
    with pytest.raises(RunFinishedError):  # same config: already done (a study skips it)
        check_run_dir(build_config([], over, env={}))
    # resume-free keys may differ
    check = build_config([], over + ["train.progress_bar=true", "data.num_workers=1"], env={})
    with pytest.raises(RunFinishedError):
        check_run_dir(check)
    # another config under the same run name: a plain ValueError naming the difference (a study stops)
    with pytest.raises(ValueError, match=r"holds a finished run with another config \(train.max_steps: 8 .* vs 20") as e:
        check_run_dir(build_config([], over + ["train.max_steps=20"], env={}))
    assert not isinstance(e.value, RunFinishedError)


def test_study_checks_every_run_dir_before_training(tmp_path, corpus_dir, data_cache, capsys):
    """`--variants residual mhc` where mhc-s0 holds a finished run of another config: exit 2 before the
    residual run is even created (it used to train residual, then stop at mhc, or skip mhc if it
    was the finished one)."""
    from mhc_repro.cli import main as cli_main

    over = micro_overrides(tmp_path, corpus_dir, data_cache)
    _fake_finished_run(build_config([], over + ["train.max_steps=4"], env={}))  # mhc-s0, 4 steps
    argv = ["train", "--variants", "residual", "mhc"]
    for o in over:
        argv += ["--set", o]
    assert cli_main(argv) == 2
    assert "holds a finished run with another config (train.max_steps: 4" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "test" / "residual-s0").exists()


def test_bad_global_batch_leaves_no_run_dir(tmp_path, corpus_dir, data_cache):
    """A config error found at launch must not leave a config.yaml that then blocks the corrected rerun."""
    over = micro_overrides(tmp_path, corpus_dir, data_cache)
    with pytest.raises(ValueError, match="not a multiple"):
        train(build_config([], over + ["train.global_batch_size=6"], env={}))
    assert not (tmp_path / "runs" / "test" / "mhc-s0").exists()


def test_fp16_overflow_is_left_to_the_grad_scaler(tmp_path):
    """precision "16-mixed": a non-finite gradient norm is the GradScaler's routine overflow (it skips the
    step and lowers the scale), not a reason to stop the run; and AdamW is not fused, since a fused step
    unscales itself and Lightning would then hand the hooks (norm, clipping) loss-scaled gradients."""
    from types import SimpleNamespace

    from mhc_repro.training.module import LMModule

    module = LMModule(build_config([], micro_overrides(tmp_path, tmp_path, tmp_path), env={}).to_dict())
    for p in module.model.parameters():
        p.grad = torch.full_like(p, float("inf"))
    module._trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=torch.amp.GradScaler("cpu")),
                                      global_step=0)
    module.on_before_optimizer_step(None)  # no raise
    assert not math.isfinite(module._grad_norm)
    assert module._grad_scaler() is not None
    module._trainer = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=None), global_step=0)
    with pytest.raises(NonFiniteLossError, match="non-finite gradient norm"):
        module.on_before_optimizer_step(None)  # bf16 / fp32: stop before the optimizer step
