"""benchmarks/ab_stack.py on CPU: rotated interleaving, switches held while a variant is timed, and
the per-round ratio statistics (timer faked; the steps themselves really run)."""

import json
import os
import statistics
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks"))
import ab_stack  # noqa: E402


def test_interval_is_the_t_interval_of_the_mean():
    med, lo, hi = ab_stack.interval([1.0, 2.0, 3.0])
    half = 4.303 * 1.0 / 3 ** 0.5  # sd 1, df 2
    assert med == 2.0 and lo == pytest.approx(2.0 - half) and hi == pytest.approx(2.0 + half)
    assert ab_stack.interval([5.0])[0] == 5.0


def test_run_ab_rotates_and_holds_switches(monkeypatch):
    from mhc_repro.kernels import launch

    fixed = {"residual": 10.0, "mhc_ref": 12.0, "residual_2mma": 13.0}
    kind_of, calls = {}, []
    real_make = ab_stack.make_step

    def make(kind, *a):
        step, blocks = real_make(kind, *a)
        kind_of[step] = kind
        return step, blocks

    def timer(fn, warmup, iters):
        fn()  # the step really runs, forward and backward
        calls.append((kind_of[fn], launch.PROJ_FWD_MERGED))
        return fixed[kind_of[fn]]

    monkeypatch.setattr(ab_stack, "make_step", make)
    x0 = torch.randn(1, 8, 128, dtype=torch.bfloat16, requires_grad=True)
    dout = torch.randn(1, 8, 128, dtype=torch.bfloat16)
    variants = list(fixed)
    run = ab_stack.run_ab(variants, 128, 4, 1, False, x0, dout, rounds=3, iters=1, timer=timer)
    assert [k for k, _ in calls] == variants + variants[1:] + variants[:1] + variants[2:] + variants[:2]
    assert all(merged is (kind != "residual_2mma") for kind, merged in calls)  # _2mma held while timed
    s = run["summary"]
    assert s["residual"]["ratio_median"] == 1.0 and run["ms"]["residual_2mma"] == [13.0] * 3
    assert s["mhc_ref"]["ratio_median"] == pytest.approx(1.2) and s["mhc_ref"]["ratio_ci95"] == pytest.approx([1.2, 1.2])


def test_median_interval_is_the_binomial_order_statistic_interval():
    vals = [float(v) for v in range(1, 17)]  # 16 values: k = 4 (coverage 0.979; k = 5 gives 0.923)
    assert ab_stack.median_interval(vals) == (4.0, 13.0)
    assert ab_stack.median_interval([3.0, 1.0, 2.0, 5.0, 4.0, 8.0, 7.0, 6.0]) == (1.0, 8.0)  # n = 8: k = 1 (0.992)
    lo, hi = ab_stack.median_interval([1.0, 2.0, 3.0, 4.0, 5.0])  # n = 5: even k = 1 covers only 0.9375
    assert lo != lo and hi != hi  # nan: too few rounds for 95 %
    # a few slow rounds widen the t-interval, not the median's
    ratios = [1.21, 1.20, 1.22, 1.21, 1.12, 1.21, 1.20, 1.13, 1.21, 1.22, 1.20, 1.21]
    _, tlo, thi = ab_stack.interval(ratios)
    mlo, mhi = ab_stack.median_interval(ratios)
    assert mhi - mlo < thi - tlo


def test_summarize_reprints_a_saved_record(tmp_path, capsys):
    ms = {"residual": [10.0, 10.5, 10.2], "mhc_fused_linked": [12.0, 12.6, 12.1]}
    rec = dict(device="test", commit="abc", runs=[dict(C=2048, blocks=4, compiled=True, rounds=3, iters=5, ms=ms)])
    path = tmp_path / "ab.json"
    path.write_text(json.dumps(rec))
    ab_stack.resummarize(str(path))
    out = capsys.readouterr().out
    assert "C = 2048, 4 blocks, compiled, 3 rounds x 5 steps" in out
    assert f"x {statistics.median([1.2, 1.2, 12.1 / 10.2]):.4f}" in out and "min 12.00 ms, x 1.2000" in out


def test_summarize_against_another_base(tmp_path, capsys):
    """--base: the per-round ratios of a paired A/B between two mHC variants of the same record."""
    import pytest

    ms = {"residual": [10.0, 10.5, 10.2], "old": [12.0, 12.6, 12.1], "new": [11.4, 12.6, 12.0]}
    rec = dict(device="test", commit="abc", runs=[dict(C=4096, blocks=2, compiled=True, rounds=3, iters=5, ms=ms)])
    path = tmp_path / "ab.json"
    path.write_text(json.dumps(rec))
    ab_stack.resummarize(str(path), base="old")
    out = capsys.readouterr().out
    assert "ratios against old" in out
    new_line = next(ln for ln in out.splitlines() if ln.strip().startswith("new"))
    assert f"x {statistics.median([11.4 / 12.0, 1.0, 12.0 / 12.1]):.4f}" in new_line
    with pytest.raises(SystemExit, match="'nope' is not a variant"):
        ab_stack.resummarize(str(path), base="nope")


def test_position_effect_follows_the_rotation():
    """Round r starts with variant r mod k: a slot bias shows as the same gap in every variant."""
    ms = {"a": [10.0, 12.0, 10.2, 12.2], "b": [21.0, 20.0, 21.4, 20.2]}  # a first in rounds 0, 2; b in 1, 3
    pos = ab_stack.position_effect(ms)
    assert pos["a"] == pytest.approx((10.1, 12.1)) and pos["b"] == pytest.approx((20.1, 21.2))
    assert ab_stack.position_effect({"a": [1.0]}) == {}


def test_slot_warmup_reaches_the_timer(monkeypatch):
    seen = []
    monkeypatch.setattr(ab_stack, "make_step", lambda kind, *a: ((lambda: None), None))
    ab_stack.run_ab(["x", "y"], 8, 1, 1, False, None, None, rounds=2, iters=3,
                    timer=lambda fn, warmup, iters: seen.append((warmup, iters)) or 1.0, slot_warmup=2)
    assert seen == [(2, 3)] * 4
