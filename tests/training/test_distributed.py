"""Two-process CPU training (gloo) through the real CLI, Lightning launching rank 1 itself: DDP and FSDP2
(FSDP2Strategy: Lightning's ModelParallelStrategy, mesh (2, 1)) on a micro tiny-moe (MLA + MoE) mHC model.

Checked: a two-variant study in one launch, one MLflow run per variant with a gap-free step history, DDP == one process on the same global batch, FSDP2
== DDP, an FSDP2 run SIGKILLed on every rank resumes from its sharded checkpoint directory exactly, and
``load_lm`` reads that directory.
"""
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mhc_repro.training.compose import build_config
from mhc_repro.training.run import train

from .conftest import micro_overrides

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STEPS, KILL_AT = 6, 5  # checkpoints every 3 steps: the killed run resumes from step 3
MOE = {
    "train.preset": "tiny-moe", "train.max_steps": STEPS, "train.val_every": 3, "train.amax_every": 3,
    "train.torch_threads": 1, "model.dense_ffn_width": 48,
    "model.attention": "{kind: mla, n_heads: 2, head_dim: 16, kv_lora_rank: 16, q_lora_rank: 0, rope_dim: 8, v_head_dim: 16}",
    "model.moe": "{n_routed: 4, n_active_routed: 2, n_shared: 1, expert_width: 16, n_dense_blocks: 1}",
}

# every rank imports this script (Lightning relaunches sys.argv), so every rank kills itself after step K
KILLER = textwrap.dedent("""
    import os, signal, sys
    from mhc_repro import cli
    from mhc_repro.training import run

    class StepCheckpointThenKill(run.StepCheckpoint):
        def on_train_batch_end(self, trainer, *a):
            super().on_train_batch_end(trainer, *a)
            if trainer.global_step == int(os.environ["KILL_AT"]):
                os.kill(os.getpid(), signal.SIGKILL)
    run.StepCheckpoint = StepCheckpointThenKill
    sys.exit(cli.main())
""")


def _overrides(root, corpus_dir, data_cache, strategy, name, **extra):
    return micro_overrides(root, corpus_dir, data_cache, **{
        **MOE, "train.strategy": strategy, "train.devices": 2, "tracking.run_name": name, **extra})


def _cli(overrides, cwd, script=None, args=(), **env_extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MHC_", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"))}
    env.update(PYTHONPATH=str(REPO), **env_extra)
    head = [sys.executable, str(script)] if script else [sys.executable, "-m", "mhc_repro.cli"]
    sets = [a for o in overrides for a in ("--set", o)]
    return subprocess.run([*head, "train", *sets, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def _one_run(client, experiment, name):
    exp = client.get_experiment_by_name(experiment)
    runs = [r for r in client.search_runs([exp.experiment_id]) if r.info.run_name == name]
    assert len(runs) == 1, [r.info.run_id for r in runs]  # rank 1 must not open a second run
    return runs[0]


def _history(client, run_id, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, corpus_dir, data_cache):
    """A study of two variants in one 2-process launch (as `make reproduce-3b` does): rank 1 runs the
    whole CLI too, so both ranks go through the variants in step; the second fit spawns nothing."""
    root = tmp_path_factory.mktemp("ddp")
    over = [o for o in _overrides(root, corpus_dir, data_cache, "ddp", "x", **{"tracking.study": "ddp-study"})
            if not o.startswith(("tracking.run_name=", "train.variant="))]  # --set would beat --variants
    proc = _cli(over, root, args=("--variants", "residual", "mhc"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (root / "runs" / "ddp-study" / "residual-s0" / "finished.json").exists()
    assert proc.stdout.count('"run_name"') == 2  # one summary per variant: rank 1 (same stdout) stays quiet
    return root / "runs" / "ddp-study" / "mhc-s0", over


def test_ddp_two_processes_one_run_and_matches_one_process(ddp_run, tmp_path, corpus_dir, data_cache):
    from mlflow.tracking import MlflowClient

    run_dir, over = ddp_run
    done = json.loads((run_dir / "finished.json").read_text())
    assert done["steps"] == STEPS and math.isfinite(done["final_train_loss"])
    assert (run_dir / "checkpoints" / f"step{STEPS:07d}.ckpt").is_file()  # DDP: one file, rank 0
    uri = dict(o.split("=", 1) for o in over)["tracking.tracking_uri"]
    client = MlflowClient(uri)
    run = _one_run(client, "ddp-study", "mhc-s0")
    assert run.info.status == "FINISHED"
    loss = _history(client, run.info.run_id, "train/loss")
    assert [s for s, _ in loss] == list(range(1, STEPS + 1)) and all(math.isfinite(v) for _, v in loss)
    # 2 ranks x batch 4 x 32 tokens per step
    assert [v for _, v in _history(client, run.info.run_id, "train/tokens")] == [2 * 4 * 32 * k for k in range(1, STEPS + 1)]
    assert [s for s, _ in _history(client, run.info.run_id, "amax/fwd_composite_max")] == [3, 6]

    # one process, batch 8: the same global batch (the sampler hands rank r the r-th slice of it)
    one = micro_overrides(tmp_path, corpus_dir, data_cache, **{
        **MOE, "train.max_steps": 1, "data.batch_size": 8, "tracking.run_name": "one"})
    s = train(build_config([], one, env={}))
    ref = client.get_run(s["mlflow_run_id"]).data.metrics
    assert ref["train/loss"] == pytest.approx(loss[0][1], rel=1e-5)
    assert ref["train/grad_norm"] == pytest.approx(_history(client, run.info.run_id, "train/grad_norm")[0][1], rel=1e-4)


def test_fsdp2_kill9_resumes_from_sharded_checkpoint(ddp_run, tmp_path, corpus_dir, data_cache):
    from mlflow.tracking import MlflowClient

    from mhc_repro.training.checkpoint import load_lm

    ddp_dir, _ = ddp_run
    over = _overrides(tmp_path, corpus_dir, data_cache, "fsdp", "fsdp")
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = _cli(over, tmp_path, script=script, KILL_AT=str(KILL_AT))
    assert proc.returncode == -9, proc.stderr[-3000:]
    run_dir = tmp_path / "runs" / "test" / "fsdp"
    ckpts = list((run_dir / "checkpoints").glob("*.ckpt"))
    assert [p.name for p in ckpts] == ["step0000003.ckpt"] and ckpts[0].is_dir()  # FSDP2: shards + meta.pt

    proc = _cli(over, tmp_path)  # the same command again
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Restored all states from the checkpoint" in proc.stdout + proc.stderr
    done = json.loads((run_dir / "finished.json").read_text())
    ref = json.loads((ddp_dir / "finished.json").read_text())
    assert done["final_train_loss"] == pytest.approx(ref["final_train_loss"], rel=1e-5)  # FSDP2 == DDP
    assert done["final_val_loss"] == pytest.approx(ref["final_val_loss"], rel=1e-5)

    uri = dict(o.split("=", 1) for o in over)["tracking.tracking_uri"]
    client = MlflowClient(uri)
    run = _one_run(client, "test", "fsdp")
    assert run.info.status == "FINISHED"
    for key in ("train/loss", "train/grad_norm", "train/tokens"):
        assert [s for s, _ in _history(client, run.info.run_id, key)] == list(range(1, STEPS + 1)), key

    # the evaluation contract on a sharded checkpoint: the same weights as the DDP run
    model, cfg, tok = load_lm(run_dir)
    ref_model, _, _ = load_lm(ddp_dir)
    a, b = model.state_dict(), ref_model.state_dict()
    assert a.keys() == b.keys() and cfg.moe.n_routed == 4 and tok is not None
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-4
    assert a["blocks.1.ffn.routing_bias"].abs().sum() > 0  # the all-reduced MoE balancing ran


def _finite_worker(rank, init_file, out_dir):
    import torch.distributed as dist

    from mhc_repro.training.module import all_ranks_finite

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        loss = torch.tensor(float("nan") if rank == 0 else 1.0)
        Path(out_dir, f"r{rank}").write_text(f"{all_ranks_finite(loss)} {all_ranks_finite(torch.tensor(2.0))}")
    finally:
        dist.destroy_process_group()


def test_non_finite_on_one_rank_stops_every_rank(tmp_path):
    """A NaN on rank 0 alone must make rank 1 stop too (else it would hang in the next all-reduce)."""
    import torch.multiprocessing as mp

    mp.spawn(_finite_worker, args=(str(tmp_path / "pg"), str(tmp_path)), nprocs=2, join=True)
    assert [(tmp_path / f"r{r}").read_text() for r in (0, 1)] == ["False True", "False True"]


def test_resume_on_fewer_processes_keeps_the_global_batch(tmp_path, corpus_dir, data_cache):
    """Killed on 2 processes (accumulation 2) after an odd step's checkpoint, resumed on 1 (accumulation
    4): every step after resume still trains on the whole global batch, as an uninterrupted 1-process run."""
    common = {**MOE, "train.max_steps": 5, "data.batch_size": 4, "train.global_batch_size": 16,
              "train.val_every": 100, "train.amax_every": 0, "train.ckpt_every": 3, "train.strategy": "ddp"}
    over = micro_overrides(tmp_path, corpus_dir, data_cache, **{**common, "train.devices": 2, "tracking.run_name": "r"})
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = _cli(over, tmp_path, script=script, KILL_AT="4")
    assert proc.returncode == -9, proc.stderr[-3000:]
    resumed = train(build_config([], [o for o in over if not o.startswith("train.devices=")] + ["train.devices=1"],
                                 env={}))
    straight = train(build_config([], micro_overrides(tmp_path, corpus_dir, data_cache, **{
        **common, "train.devices": 1, "tracking.run_name": "s"}), env={}))
    assert resumed["resumed_from"].endswith("step0000003.ckpt") and resumed["steps"] == 5
    assert resumed["final_train_loss"] == pytest.approx(straight["final_train_loss"], rel=1e-5)
    ck = torch.load(Path(resumed["checkpoint"]), map_location="cpu", weights_only=True)
    assert ck["mhc_repro"]["tokens_seen"] == 5 * 16 * 32  # 5 steps x 16 sequences x 32 tokens
