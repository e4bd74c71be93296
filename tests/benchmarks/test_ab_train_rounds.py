"""reports/training/ab_train_rounds.py on a synthetic ab_train.py record: per-round ratios to the base
arm, the step range after the warm-up where rows keep every step, "-" for a missing arm."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "reports", "training"))
import ab_train_rounds  # noqa: E402


def _row(ms, steps=None, warmup=None):
    return {"step_time_s_median": ms / 1e3, "step_times_s": steps, "warmup_steps_excluded": warmup}


def test_rounds_ratios_and_step_ranges(tmp_path, capsys):
    rows = [{"residual": _row(200.0), "mhc": _row(220.0, [9.0, 0.5, 0.21, 0.23, 0.22], warmup=1)},
            {"residual": _row(210.0)}]  # the mhc process of round 2 failed
    path = tmp_path / "ab.json"
    path.write_text(json.dumps({"ms": {"residual": [200.0, 210.0], "mhc": [220.0]}, "rows": rows}))
    assert ab_train_rounds.main(["residual", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    # warm-up (1 step) and the first step are left out of the range: 210-230 ms
    assert out[1] == "round 1: residual 200.0 ms (1.000x); mhc 220.0 ms (1.100x) [steps 210.0–230.0 ms]"
    assert out[2] == "round 2: residual 210.0 ms (1.000x); mhc -"


def test_no_arguments_prints_usage(capsys):
    assert ab_train_rounds.main([]) == 2
    assert "ab_train_rounds.py BASE" in capsys.readouterr().out


def test_rounds_pool_across_files(tmp_path, capsys):
    """Two files of two rounds each pool into one four-round summary (ratios 1.05, 1.10, 1.15, 1.20)."""
    paths = []
    for i, pair in enumerate([(1.05, 1.10), (1.15, 1.20)]):
        rows = [{"residual": _row(200.0), "mhc": _row(200.0 * r)} for r in pair]
        path = tmp_path / f"ab{i}.json"
        path.write_text(json.dumps({"ms": {"residual": [200.0] * 2, "mhc": [200.0 * r for r in pair]}, "rows": rows}))
        paths.append(str(path))
    assert ab_train_rounds.main(["residual", *paths]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    # mean 1.125, sd 0.0645, t(3) 3.18: 1.022-1.228; four values are too few for a 95 % median interval
    assert last.startswith("pooled mhc / residual: 4 rounds, median 1.125x (95 % t of the mean 1.022–1.228;")
    assert last.endswith("rounds 1.050–1.200")
