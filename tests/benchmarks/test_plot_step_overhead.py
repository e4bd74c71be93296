"""reports/kernels/plot_step_overhead.py on synthetic profile_stack.py records: the rows add up to the
wall difference, the allowance follows the issue's target, widths without both variants are refused."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "reports", "kernels"))
import plot_step_overhead  # noqa: E402


def _run(variant, c, wall, idle, cats, kernels):
    return dict(variant=variant, C=c, blocks=4, wall_us=wall, idle_us=idle, categories=cats,
                kernels={n: dict(category=cat, us=us) for n, (cat, us) in kernels.items()})


def _record(tmp_path, runs, name="prof.json"):
    path = tmp_path / name
    path.write_text(json.dumps(dict(commit="abc1234", runs=runs)))
    return str(path)


def test_rows_sum_to_the_wall_difference_and_plot(tmp_path, capsys):
    base = _run("residual", 2048, 40000.0, 1000.0, dict(inductor=8000.0, gemm=26000.0, other=600.0),
                {"triton_red_fused_norm": ("inductor", 8000.0)})
    mhc = _run("mhc_fused_linked_fnorm", 2048, 46000.0, 900.0,
               dict(mhc=7000.0, inductor=7000.0, gemm=26000.0, other=700.0),
               {"post_res_fwd": ("mhc", 3000.0), "proj_dx_tma": ("mhc", 4000.0), "x": ("inductor", 7000.0)})
    path = _record(tmp_path, [base, mhc])
    out_png = tmp_path / "o.png"
    assert plot_step_overhead.main([str(out_png), path]) == 0
    assert out_png.stat().st_size > 0
    (ov,) = plot_step_overhead.collect([path], "mhc_fused_linked_fnorm")
    parts = dict(ov["parts"])
    assert list(parts)[:2] == ["proj_dx_tma", "post_res_fwd"]  # largest first
    assert parts["inductor (Δ)"] == -1000.0 and parts["other (Δ)"] == 100.0 and parts["GPU idle (Δ)"] == -100.0
    # 7000 (mHC) - 1000 (inductor) + 100 (other) - 100 (idle) = the 6000 µs wall difference
    assert sum(parts.values()) == pytest.approx(ov["wall_us"]) == 6000.0
    assert ov["allowance_us"] == pytest.approx(0.10 * 40000.0)
    assert "over by +2000.0" in capsys.readouterr().out


def test_refuses_records_without_both_variants(tmp_path):
    base = _run("residual", 2048, 40000.0, 1000.0, {}, {})
    with pytest.raises(SystemExit, match="no C with both 'residual' and 'mhc_fused_linked_fnorm'"):
        plot_step_overhead.collect([_record(tmp_path, [base])], "mhc_fused_linked_fnorm")
