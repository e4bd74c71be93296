"""reports/kernels/plot_tradeoff.py on synthetic records: step-time ratios from the A/B record, peaks
× the residual's from the benchmark record, only variants in both; the plot file; a clear error when
the records share nothing."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "reports", "kernels"))
import plot_tradeoff  # noqa: E402


def _records():
    ab = dict(device="test", commit="abc", runs=[dict(C=2048, summary={
        "residual": dict(ratio_median=1.0, ratio_ci95=[1.0, 1.0]),
        "mhc_a": dict(ratio_median=1.2, ratio_ci95=[1.1, 1.3]),
        "mhc_only_in_ab": dict(ratio_median=1.5, ratio_ci95=[1.4, 1.6])})])
    bench = dict(stack=[dict(C=2048, mode="compiled", variant="residual", peak_gb=4.0),
                        dict(C=2048, mode="compiled", variant="mhc_a", peak_gb=5.0),
                        dict(C=2048, mode="eager", variant="mhc_only_in_ab", peak_gb=9.0)])
    return ab, bench


def test_points_pair_the_two_records():
    pts = plot_tradeoff.points(*_records())
    assert list(pts) == [2048] and len(pts[2048]) == 1
    p = pts[2048][0]
    assert p["variant"] == "mhc_a" and p["peak"] == pytest.approx(1.25)
    assert (p["ratio"], p["lo"], p["hi"]) == (1.2, 1.1, 1.3)


def test_plot_writes_png_and_rejects_disjoint_records(tmp_path):
    ab, bench = _records()
    a, b, dst = tmp_path / "ab.json", tmp_path / "bench.json", tmp_path / "t.png"
    a.write_text(json.dumps(ab))
    b.write_text(json.dumps(bench))
    plot_tradeoff.main(str(a), str(b), str(dst))
    assert dst.read_bytes()[:4] == b"\x89PNG"
    b.write_text(json.dumps(dict(stack=[])))
    with pytest.raises(SystemExit, match="share no width"):
        plot_tradeoff.main(str(a), str(b), str(dst))
