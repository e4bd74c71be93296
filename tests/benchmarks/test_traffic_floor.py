"""reports/kernels/traffic_floor.py on a synthetic benchmark record: ratios ordered by traffic, and the
issue target's unit budget consistent with the ratio formula."""

import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "reports", "kernels"))
import traffic_floor  # noqa: E402


def test_floor_ratios_and_target_budget(tmp_path, capsys):
    rec = dict(copy_gb_s=4000.0, kernels=[dict(C=2048, kernel="  coef_fwd (x)", ms=0.02)],
               stack=[dict(variant="residual", mode="compiled", C=2048, blocks=4, ms=40.0)])
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(rec))
    traffic_floor.main(str(path), fractions=(1.0,))
    out = capsys.readouterr().out
    rows = {int(u): float(x) for u, x in re.findall(r"(\d+) units\s+100% copy: ([\d.]+)x", out)}
    assert rows[25] < rows[35] < rows[54]  # fewer bytes, lower ratio
    unit_us = 2 * 16384 * 2048 / 4000e9 * 1e6
    assert abs(rows[54] - (1 + 8 * (54 * unit_us + 20.0) / 1e3 / 40.0)) < 1e-3
    budget = int(re.search(r"target 1.10x allows per sub-layer: 100% copy: (\d+) units", out).group(1))
    assert abs(budget - (0.10 * 40e3 / 8 - 20.0) / unit_us) < 1


def test_replaced_work_credit_lowers_every_ratio_by_the_same_time(tmp_path, capsys):
    """--replaced C=MS: each design's credited ratio is its plain one less (MS − the norm's 5 units at
    copy speed) over the residual's step, and the credited unit budget grows by that time."""
    rec = dict(copy_gb_s=4000.0, kernels=[dict(C=2048, kernel="coef_bwd", ms=0.02)],
               stack=[dict(variant="residual", mode="compiled", C=2048, blocks=4, ms=40.0)])
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(rec))
    traffic_floor.main(str(path), fractions=(1.0,), replaced_ms={2048: 1.2})
    out = capsys.readouterr().out
    plain = [float(x) for x in re.findall(r"^  (?!  credited)\S.*? units\s+100% copy: ([\d.]+)x", out, re.M)]
    credited = [float(x) for x in re.findall(r"^    credited\s+\d+ units\s+100% copy: ([\d.]+)x", out, re.M)]
    unit_us = 2 * 16384 * 2048 / 4000e9 * 1e6
    credit_us = 1.2e3 / 8 - traffic_floor.NORM_UNITS * unit_us
    assert len(plain) == len(credited) == len(traffic_floor.DESIGNS)
    for p, c in zip(plain, credited):
        assert abs((p - c) - 8 * credit_us / 1e3 / 40.0) < 2e-3
    b0, b1 = (int(u) for u in re.findall(r"allows per sub-layer(?: \(credited\))?: 100% copy: (\d+) units", out))
    assert abs((b1 - b0) - credit_us / unit_us) <= 1


def test_replaced_argument_rejects_bad_items():
    import pytest
    with pytest.raises(SystemExit, match="--replaced '2048': expected C=MS"):
        traffic_floor._replaced(["2048"])
    with pytest.raises(SystemExit, match="expected C=MS"):
        traffic_floor._replaced(["wide=1.0"])
