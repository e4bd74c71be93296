"""mhc_repro.training.bench on CPU: a tiny model per variant, the timed steps apart from the profiled
ones, and the profile's per-category sums."""
import json

import pytest

from mhc_repro.diagnostics.kernel_profile import CATEGORIES
from mhc_repro.training import bench

SMALL = ["model.d_model=32", "model.n_blocks=2", "model.vocab_size=64", "model.max_seq_len=16",
         "model.attention={n_heads: 2, head_dim: 16}", "model.dense_ffn_width=64"]


def test_bench_times_then_profiles(tmp_path, capsys):
    out = tmp_path / "b.json"
    argv = ["--config", "experiments/tiny/base.yaml", "--variants", "residual", "mhc", "--steps", "4",
            "--warmup", "1", "--micro-batch", "2", "--seq-len", "16", "--profile-steps", "2", "--out", str(out)]
    for s in SMALL:
        argv += ["--set", s]
    assert bench.main(argv) == 0
    rep = json.loads(out.read_text())
    assert [r["variant"] for r in rep["results"]] == ["residual", "mhc"]
    for r in rep["results"]:
        assert "error" not in r, r.get("traceback")
        assert r["steps"] == 4 and r["profiled_steps"] == 2 and r["tokens_per_sec"] > 0
        # every timed step is kept; the median is over those after the warm-up ones
        times = r["step_times_s"]
        assert len(times) == 4 and times[0] == r["first_step_s"] and min(times) > 0
        after = sorted(times[r["warmup_steps_excluded"] + 1:])
        assert r["step_time_s_median"] == after[len(after) // 2]
        prof = r["profile"]
        assert prof["steps"] == 2 and set(prof["categories"]) == set(CATEGORIES)
        assert prof["wall_us"] > 0 and prof["kernel_us"] > 0 and prof["top"]
        assert abs(sum(prof["categories"].values()) - prof["kernel_us"]) < 1e-6 * prof["kernel_us"] + 1e-6
        assert abs(sum(r["us"] for r in prof["kernels"].values()) - prof["kernel_us"]) < 1e-6 * prof["kernel_us"] + 1e-6
        assert set(prof["host_api"]) == {"launch", "sync", "memcpy"}  # zeros on the CPU
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [p["variant"] for p in printed if "us_by_category" in p] == ["residual", "mhc"]


def test_profile_window_holds_the_profiled_steps_only(tmp_path, monkeypatch):
    """Validation and the amax pass run outside the profiler's window (one of them inside it added a
    forward pass to every profiled step's sums: run 74), and the window closes after its steps."""
    import torch

    from mhc_repro.training import callbacks

    seen = []
    for name in ("validate", "amax"):
        orig = getattr(callbacks.StepEnd, name)

        def spy(self, *a, _orig=orig, _name=name):
            seen.append((_name, torch._C._autograd._profiler_enabled()))
            return _orig(self, *a)

        monkeypatch.setattr(callbacks.StepEnd, name, spy)
    argv = ["--config", "experiments/tiny/base.yaml", "--variants", "mhc", "--steps", "3", "--warmup", "1",
            "--micro-batch", "2", "--seq-len", "16", "--profile-steps", "3", "--out", str(tmp_path / "b.json"),
            "--diag-dir", str(tmp_path / "diag")]
    for s in SMALL:
        argv += ["--set", s]
    assert bench.main(argv) == 0
    r = json.loads((tmp_path / "b.json").read_text())["results"][0]
    assert "error" not in r, r.get("traceback")
    assert sorted(seen) == [("amax", False), ("validate", False)], seen
    assert r["profile"]["steps"] == 3 and r["val_loss"] is not None


def test_negative_profile_steps_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--config", "experiments/tiny/base.yaml", "--profile-steps", "-1", "--out", str(tmp_path / "b.json")])
    assert "--profile-steps -1 is invalid; allowed: 0 (off) or a positive number of steps" in capsys.readouterr().err


def test_final_pass_off_skips_validation_and_amax(tmp_path):
    """--final-pass false: no validation loss and no Amax file after the steps (what ab_train runs)."""
    from mhc_repro.training import bench

    out = tmp_path / "b.json"
    bench.main(["--config", "experiments/tiny/base.yaml", "--variants", "residual", "--steps", "3", "--warmup", "1",
                "--micro-batch", "2", "--seq-len", "16", "--accelerator", "cpu", "--final-pass", "false",
                "--diag-dir", str(tmp_path / "diag"), "--out", str(out)])
    row = json.loads(out.read_text())["results"][0]
    assert row["final_pass"] is False and row["val_loss"] is None and "amax_last" not in row
    assert row["final_train_loss"] is not None


def test_bigram_data_gives_a_falling_per_step_loss_curve(tmp_path):
    """--data bigram: the recorded per-step losses fall well below log(vocab) (uniform tokens cannot),
    one loss and gradient norm per optimizer step, no GradScaler scale outside 16-mixed."""
    import math

    out = tmp_path / "b.json"
    argv = ["--config", "experiments/tiny/base.yaml", "--variants", "mhc", "--steps", "30", "--warmup", "1",
            "--micro-batch", "8", "--seq-len", "16", "--accelerator", "cpu", "--final-pass", "false",
            "--data", "bigram", "--set", "train.lr=1e-2", "--set", "train.warmup_steps=2",
            "--diag-dir", str(tmp_path / "diag"), "--out", str(out)]
    for s in SMALL:
        argv += ["--set", s]
    assert bench.main(argv) == 0
    row = json.loads(out.read_text())["results"][0]
    assert "error" not in row, row.get("traceback")
    losses = row["train_losses"]
    assert len(losses) == len(row["grad_norms"]) == 30 and row["grad_scales"] == []
    assert row["data"] == "bigram" and all(math.isfinite(v) for v in losses)
    assert losses[0] > math.log(64) - 0.3 and min(losses[-5:]) < math.log(64) - 0.7, losses


def test_unknown_precision_or_data_is_a_clear_error(tmp_path, capsys):
    for flag, bad in (("--precision", "fp8"), ("--data", "zipf")):
        with pytest.raises(SystemExit):
            bench.main(["--config", "experiments/tiny/base.yaml", flag, bad, "--out", str(tmp_path / "b.json")])
        assert f"invalid choice: '{bad}'" in capsys.readouterr().err
