"""The green-context probe's overlap arithmetic (benchmarks/green_ctx_probe.py), on the CPU."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import green_ctx_probe as probe  # noqa: E402


def _rows(**extra):
    rows = {"gemm alone (whole GPU)": {"span_ms": [10.0]}, "mem alone (whole GPU)": {"span_ms": [5.0]},
            "sequential gemm then mem": {"wall_ms": 15.0},
            "gemm alone on 100 SMs": {"span_ms": [12.5]}, "mem alone on 32 SMs": {"span_ms": [10.0]},
            "concurrent 100 | 32": {"wall_ms": 14.0, "span_ms": [14.0, 8.0]},
            "two streams": {"wall_ms": 15.0, "span_ms": [15.0, 15.0]}}
    rows.update(extra)
    return rows


def test_overlap_speeds_take_out_the_tail_run_alone():
    table = {r["row"]: r for r in probe.overlap_table(_rows())}
    green = table["concurrent 100 | 32"]
    assert green["vs_sequential"] == pytest.approx(14 / 15)
    assert green["gemm_speed"] == pytest.approx(10 / 14) and green["mem_speed"] == pytest.approx(5 / 8)
    # The GEMMs ran 6 ms alone on 100 SMs after the memory chain ended: 6 / 12.5 of their work.
    assert green["gemm_overlap"] == pytest.approx((1 - 6 / 12.5) * 10 / 8)
    assert green["mem_overlap"] == pytest.approx(5 / 8)
    both = table["two streams"]  # ended together: no tail; partitions are the whole GPU
    assert both["gemm_overlap"] == pytest.approx(10 / 15) and both["mem_overlap"] == pytest.approx(5 / 15)


def test_carveout_rows_use_the_carveout_gemm_time():
    rows = _rows(**{"gemm alone on 100 SMs, carveout 32": {"span_ms": [20.0]},
                    "concurrent 100 | 32, carveout": {"wall_ms": 14.0, "span_ms": [14.0, 8.0]}})
    row = {r["row"]: r for r in probe.overlap_table(rows)}["concurrent 100 | 32, carveout"]
    assert row["gemm_overlap"] == pytest.approx((1 - 6 / 20) * 10 / 8)


def test_summarize_reads_a_committed_run(capsys):
    path = Path(__file__).resolve().parents[2] / "reports/kernels/run125_b3b1a56_green_ctx_probe_scale4.json"
    probe.summarize(str(path))
    out = capsys.readouterr().out
    assert "concurrent 92 | 40" in out and len(json.loads(path.read_text())["rows"]) > 10
