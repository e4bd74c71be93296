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
