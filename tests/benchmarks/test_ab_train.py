"""benchmarks/ab_train.py: rotated rounds that stay paired when a process fails, clear errors for bad
arms, an earlier record kept when a run fails, and real bench processes on the CPU."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks"))
import ab_train  # noqa: E402

SMALL = ["model.d_model=32", "model.n_blocks=2", "model.vocab_size=64", "model.max_seq_len=16",
         "model.attention={n_heads: 2, head_dim: 16}", "model.dense_ffn_width=64"]


def fake_runner(fail=()):
    """A runner whose step time is set by the arm (variant) and the round; (round, variant) in
    ``fail`` fails. Records every command it was given."""
    calls = []

    def run(cmd, timeout):
        calls.append(cmd)
        variant, out = cmd[cmd.index("--variants") + 1], cmd[cmd.index("--out") + 1]
        r = int(os.path.basename(out).split("_")[0][1:])
        if (r, variant) in fail:
            return {"error": "boom"}
        return {"step_time_s_median": (0.2 if variant == "residual" else 0.22) * (1 + 0.01 * r), "error": None}

    return run, calls


def make_cmd(variant, sets, out):
    return ["bench", "--variants", variant, "--out", out] + [x for s in sets for x in ("--set", s)]


def test_rounds_rotate_and_stay_paired():
    run, calls = fake_runner(fail={(1, "mhc")})
    arms = {"res": ("residual", []), "mhc": ("mhc", ["a=1"]), "mhc2": ("mhc", ["a=2"])}
    res = ab_train.run_rounds(arms, 3, make_cmd, runner=run)
    assert res["orders"] == [["res", "mhc", "mhc2"], ["mhc", "mhc2", "res"], ["mhc2", "res", "mhc"]]
    assert len(calls) == 9 and "--set" not in calls[0] and calls[1][-2:] == ["--set", "a=1"]
    # round 1 failed for both mhc arms (same variant): dropped for every arm, so ratios stay paired
    assert {n: len(v) for n, v in res["ms"].items()} == {"res": 2, "mhc": 2, "mhc2": 2}
    assert [f["arm"] for f in res["failed"]] == ["mhc", "mhc2"] and all(f["round"] == 1 for f in res["failed"])
    s = ab_train.summarize(res["ms"], "res")
    assert s["res"]["ratio_median"] == 1.0 and s["mhc"]["ratio_median"] == pytest.approx(1.1)


@pytest.mark.parametrize("arms, msg", [
    ([["a"]], "--arm 'a' is incomplete"),
    ([["a", "residual"]], "1 arm(s) given; an A/B needs at least 2"),
    ([["a", "residual"], ["b", "mhc", "stream"]], "--arm b: 'stream' is not a KEY=VALUE override"),
    ([["a", "residual"], ["a", "mhc"]], "--arm 'a' is given twice"),
])
def test_bad_arms_are_clear_errors(tmp_path, capsys, arms, msg):
    argv = ["--config", "experiments/tiny/base.yaml", "--out", str(tmp_path / "x.json")]
    for a in arms:
        argv += ["--arm", *a]
    with pytest.raises(SystemExit):
        ab_train.main(argv)
    assert msg in capsys.readouterr().err


def test_a_failed_run_keeps_the_earlier_record(tmp_path, monkeypatch):
    out = tmp_path / "ab.json"
    out.write_text('{"earlier": true}')
    run, _ = fake_runner(fail={(0, "mhc"), (1, "mhc")})
    monkeypatch.setattr(ab_train, "run_process", run)
    argv = ["--config", "c.yaml", "--arm", "res", "residual", "--arm", "mhc", "mhc", "--rounds", "2", "--out", str(out)]
    assert ab_train.main(argv) == 1
    assert json.loads(out.read_text()) == {"earlier": True}
    partial = json.loads((tmp_path / "ab.json.partial").read_text())
    assert partial["ms"] == {"res": [], "mhc": []} and len(partial["failed"]) == 2


def test_real_bench_processes_on_cpu(tmp_path, capsys, monkeypatch):
    """Real bench processes (the command line, the child's record read back) in round 0; round 1 (main
    needs 2 rounds) hands each arm its round-0 row again instead of 2 more processes (~8 s each): the
    rounds' rotation and pairing are test_rounds_rotate_and_stay_paired's."""
    real, rows, calls = ab_train.run_process, {}, []

    def once_per_arm(cmd, timeout):
        calls.append(cmd)
        key = tuple(a for a in cmd if not a.endswith(".json"))  # the command less its --out path
        if key not in rows:
            rows[key] = real(cmd, timeout)
        return rows[key]

    monkeypatch.setattr(ab_train, "run_process", once_per_arm)
    out = tmp_path / "ab.json"
    argv = ["--config", "experiments/tiny/base.yaml", "--arm", "residual", "residual", *SMALL,
            "--arm", "mhc", "mhc", *SMALL, "--rounds", "2", "--steps", "3", "--warmup", "1", "--seq-len", "16",
            "--bench-args", "--accelerator cpu", "--timeout", "240", "--out", str(out)]
    assert ab_train.main(argv) == 0, capsys.readouterr().out
    rec = json.loads(out.read_text())
    assert not (tmp_path / "ab.json.partial").exists() and rec["complete_rounds"] == 2 and not rec["failed"]
    assert set(rec["summary"]) == {"residual", "mhc"} and rec["summary"]["residual"]["ratio_median"] == 1.0
    assert all(t > 0 for v in rec["ms"].values() for t in v)
    assert rec["arms"]["mhc"] == {"variant": "mhc", "sets": SMALL}
    assert all(row[n]["final_pass"] is False for row in rec["rows"] for n in row)  # no eval-mode compile
    assert "x " in capsys.readouterr().out
    assert len(calls) == 4 and len(rows) == 2  # 2 rounds x 2 arms, 2 real processes


def test_env_overrides_become_the_processes_environment():
    args = ab_train.main.__globals__["argparse"].Namespace(
        config="c.yaml", steps=3, warmup=1, micro_batch=2, seq_len=16, compile=False, bench_args="")
    cmd = ab_train.bench_command(args, "mhc", ["env:MHC_KERNEL_OPS=custom_op", "model.n_blocks=2"], "/tmp/o.json")
    assert cmd[:3] == ["env", "MHC_KERNEL_OPS=custom_op", sys.executable]
    assert cmd[cmd.index("--set") + 1] == "model.n_blocks=2" and cmd.count("--set") == 1
    plain = ab_train.bench_command(args, "mhc", ["model.n_blocks=2"], "/tmp/o.json")
    assert plain[0] == sys.executable
