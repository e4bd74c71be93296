"""reports/kernels/summarize.py: ratios within one run, CUDA-graph rows against residual_cg and
without memory ratios (graph pools are outside the allocator statistics)."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "reports", "kernels"))
import summarize  # noqa: E402


def test_stack_table_bases(tmp_path):
    def row(variant, ms, peak, act):
        return dict(C=2048, blocks=4, mode="compiled", variant=variant, ms=ms, peak_gb=peak, act_gb=act)

    rec = dict(commit="abc", copy_gb_s=4000.0, kernels=[],
               stack=[row("residual", 40.0, 5.0, 4.0), row("mhc_fused_linked", 48.0, 7.5, 6.0),
                      row("residual_cg", 50.0, 0.5, 0.0), row("mhc_fused_linked_cg", 55.0, 0.9, 0.3),
                      dict(C=2048, blocks=4, mode="compiled", variant="broken", error="OOM")])
    path = tmp_path / "run.json"
    path.write_text(json.dumps(rec))
    lines = {ln.split(" | ")[3]: ln for ln in summarize.stack_table(str(path)).splitlines()[4:]}
    assert "| 1.200 | 7.50 | 1.500 | 6.00 | 1.500 |" in lines["mhc_fused_linked"]
    assert "| 1.100 | 0.90 | — | 0.30 | — |" in lines["mhc_fused_linked_cg"]  # 55 / 50, not 55 / 40
    assert "broken" not in lines  # rows without a time are left out
