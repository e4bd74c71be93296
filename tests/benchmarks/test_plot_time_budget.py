"""reports/kernels/plot_time_budget.py on a synthetic benchmark record: per-kernel copy-speed time from
the kernel's own GB/s, the stack overhead and target budget per sub-layer, and the plot file."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "reports", "kernels"))
import plot_time_budget  # noqa: E402


def _record():
    kernels = [dict(C=2048, kernel=("  " if i % 2 else "") + name, ms=0.1 * (i + 1), gb_s=1000.0 * (i + 1))
               for i, (_, name) in enumerate(plot_time_budget.sublayer_kernels())]
    stack = [dict(C=2048, mode="compiled", variant="residual", blocks=4, ms=40.0),
             dict(C=2048, mode="compiled", variant="mhc_fused_linked", blocks=4, ms=48.0)]
    return dict(device="test", commit="abc", copy_gb_s=4000.0, kernels=kernels, stack=stack)


def test_budget_per_sublayer():
    b = plot_time_budget.budget(_record(), 2048)
    assert [r[0] for r in b["rows"]] == [label for label, _ in plot_time_budget.sublayer_kernels()]
    for i, (_, us, floor) in enumerate(b["rows"]):
        assert us == pytest.approx(100.0 * (i + 1))
        assert floor == pytest.approx(us * 1000.0 * (i + 1) / 4000.0)  # bytes at copy speed
    assert b["overhead_us"] == pytest.approx(1e3 * 8.0 / 8)
    assert b["target_us"] == pytest.approx(1e3 * 0.10 * 40.0 / 8)


def test_plot_writes_png(tmp_path):
    src = tmp_path / "bench.json"
    src.write_text(json.dumps(_record()))
    dst = tmp_path / "budget.png"
    plot_time_budget.main(str(src), str(dst))
    assert dst.read_bytes()[:4] == b"\x89PNG"


def test_budget_takes_the_fused_norm_sub_layer_when_the_run_has_it():
    """A run with the *_fnorm stack and the pre_norm rows: the sub-layer's pre / pre_bwd_dh rows are
    pre_norm / pre_norm_bwd and the overhead is that stack's."""
    rec = _record()
    names = [name for _, name in plot_time_budget.sublayer_kernels(fnorm=True)]
    rec["kernels"] += [dict(C=2048, kernel=name, ms=0.5, gb_s=2000.0) for name in names if name.startswith("pre_norm")]
    rec["stack"].append(dict(C=2048, mode="compiled", variant="mhc_fused_linked_fnorm", blocks=4, ms=46.0))
    b = plot_time_budget.budget(rec, 2048)
    assert b["variant"] == "mhc_fused_linked_fnorm"
    assert [r[0] for r in b["rows"]] == [label for label, _ in plot_time_budget.sublayer_kernels(fnorm=True)]
    assert b["rows"][1][1] == pytest.approx(500.0) and b["rows"][4][1] == pytest.approx(500.0)
    assert b["overhead_us"] == pytest.approx(1e3 * 6.0 / 8)
