"""reports/kernels/overhead_vs_width.py on a synthetic A/B record whose ratios follow the model
exactly: the fit recovers it, the printed crossing widths follow, the plot is written, and a variant
the record lacks is a clear error."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "reports", "kernels"))
import overhead_vs_width  # noqa: E402

A, B = 0.002, 1.5


def _record(tmp_path, widths=(2048, 2560, 4096)):
    runs = [dict(C=c, summary={"residual": dict(ratio_median=1.0, ratio_ci95=[1.0, 1.0]),
                               "mhc": dict(ratio_median=1 + 1 / (A * c + B), ratio_ci95=[1.0, 1.3])})
            for c in reversed(widths)]
    p = tmp_path / "ab.json"
    p.write_text(json.dumps(dict(runs=runs)))
    return str(p)


def test_fit_recovers_the_model_and_sorts_by_width(tmp_path):
    rows = overhead_vs_width.measured(_record(tmp_path), "mhc")
    assert [c for c, *_ in rows] == [2048, 2560, 4096]
    a, b = overhead_vs_width.fit(rows)
    assert a == pytest.approx(A) and b == pytest.approx(B)


def test_main_prints_crossings_and_writes_the_plot(tmp_path, capsys):
    png = tmp_path / "o.png"
    overhead_vs_width.main([_record(tmp_path), str(png), "--variant", "mhc", "--targets", "1.1", "--at", "8192"])
    out = capsys.readouterr().out
    assert f"1.10× at C ≈ {(10 - B) / A:.0f}" in out  # 1/(r - 1) = 10 at r = 1.1
    assert f"C = 8192: {1 + 1 / (A * 8192 + B):.4f}×" in out
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_unknown_variant_and_too_few_widths_are_clear_errors(tmp_path):
    with pytest.raises(SystemExit, match="variant 'nope' is not in .*; it has: residual, mhc"):
        overhead_vs_width.measured(_record(tmp_path), "nope")
    with pytest.raises(SystemExit, match="need at least two widths"):
        overhead_vs_width.fit(overhead_vs_width.measured(_record(tmp_path, widths=(2048,)), "mhc"))
