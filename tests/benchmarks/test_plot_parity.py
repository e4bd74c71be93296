"""reports/kernels/plot_parity.py on a synthetic train_parity record: every gap it holds, and the plot."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "reports", "kernels"))
import plot_parity  # noqa: E402


def _record():
    curves = {"fp32/reference": [3.0, 2.0, 1.0], "bf16-true/reference": [3.0, 2.1, 1.2],
              "bf16-true/triton/bf16x2": [3.0, 2.4, 1.1], "bf16-true/reference-perturbed": [3.1, 2.0, 1.2]}
    return dict(args=dict(dtypes=["fp32", "bf16-true"]), device="cpu", gpu=None, curves=curves)


def test_gap_curves_name_and_measure_each_gap():
    got = {label: gaps for label, gaps, _ in plot_parity.gap_curves(_record())}
    assert set(got) == {"bf16-true/triton/bf16x2 − ref", "bf16 noise: bf16-true/ref − fp32/ref",
                        "chaos: bf16-true/ref, perturbed init − ref"}
    assert got["bf16-true/triton/bf16x2 − ref"] == pytest.approx([0.0, 0.3, 0.1])
    assert got["bf16 noise: bf16-true/ref − fp32/ref"] == pytest.approx([0.0, 0.1, 0.2])
    assert got["chaos: bf16-true/ref, perturbed init − ref"] == pytest.approx([0.1, 0.1, 0.0])


def test_main_writes_the_plot(tmp_path):
    src, dst = tmp_path / "tp.json", tmp_path / "tp.png"
    src.write_text(json.dumps(_record()))
    plot_parity.main(str(src), str(dst))
    assert dst.stat().st_size > 1000
