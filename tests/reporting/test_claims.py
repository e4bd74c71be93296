"""The claims ledger's verdicts follow its stated rule, on constructed data (no MLflow needed)."""

import json

import numpy as np
import pandas as pd
import pytest

from reporting_fixtures import make_study, merge

from mhc_repro.reporting import claims as C
from mhc_repro.reporting.paper_data import load_paper_numbers

P = load_paper_numbers()


@pytest.mark.parametrize("mhc, verdict", [
    ([2.950, 2.960, 2.940], C.REPRODUCED),        # clear advantage
    ([3.050, 3.060, 3.040], C.NOT_REPRODUCED),    # clearly reversed
    ([2.990, 3.012, 3.003], C.NO_EVIDENCE),       # within the seed noise
])
def test_loss_advantage_follows_welch_rule(mhc, verdict):
    study = make_study({"residual": [3.000, 3.010, 2.990], "mhc": mhc})
    claim = C.loss_advantage(study, P, "tiny")
    assert claim.verdict == verdict, claim.evidence
    assert "Welch p" in claim.evidence and "tiny" in claim.scale


def test_one_seed_is_direction_only():
    for mhc in (2.5, 3.5):  # even a large difference cannot be called with one seed
        claim = C.loss_advantage(make_study({"residual": [3.0], "mhc": [mhc]}), P, "tiny")
        assert claim.verdict == C.NO_EVIDENCE and "one seed" in claim.evidence


def test_scaling_needs_every_preset():
    good = lambda p: make_study({"residual": [3.0, 3.01], "mhc": [2.9, 2.91]}, preset=p)  # noqa: E731
    bad = make_study({"residual": [3.0, 3.01], "mhc": [3.1, 3.11]}, preset="small")
    for study, verdict in ((merge(good("tiny"), good("small")), C.REPRODUCED),
                           (merge(good("tiny"), bad), C.NOT_REPRODUCED), (good("tiny"), C.NO_EVIDENCE)):
        c1 = [C.loss_advantage(study, P, p) for p in study.presets()]
        assert C.scaling_claim(study, P, c1).verdict == verdict


def _curves(rid: str, spike: bool, surge: bool) -> list:
    rows = []
    for step in range(1, 101):
        loss = 2 + 3 * np.exp(-step / 20) + (0.5 if surge and 60 <= step <= 65 else 0.0)
        grad = 1.0 + 0.01 * np.sin(step) + (9.0 if spike and step == 60 else 0.0)
        rows += [(rid, "train/loss", step, loss), (rid, "train/grad_norm", step, grad)]
    return rows


def test_instability_events():
    h = pd.DataFrame(_curves("r", True, True), columns=["run_id", "key", "step", "value"])
    loss, grad = h[h.key == "train/loss"], h[h.key == "train/grad_norm"]
    assert C.instability_events(loss, grad) == ([60], [60])
    quiet = pd.DataFrame(_curves("r", True, False), columns=h.columns)
    assert C.instability_events(quiet[quiet.key == "train/loss"], quiet[quiet.key == "train/grad_norm"]) == ([60], [])


@pytest.mark.parametrize("hc_event, base_event, verdict", [
    (True, False, C.REPRODUCED), (True, True, C.NOT_REPRODUCED), (False, False, C.NO_EVIDENCE)])
def test_hc_instability_verdicts(hc_event, base_event, verdict):
    hist = _curves("tiny-hc-full-0", hc_event, hc_event) + _curves("tiny-residual-none-0", base_event, base_event)
    study = make_study({"residual": [3.0], "hc": [3.0]}, history=hist)
    assert C.hc_instability(study, P, "tiny").verdict == verdict


def _amax(composite: float) -> dict:
    return dict(step=10, fwd_single=[1.0, 1.0], bwd_single=[0.99, 1.02], fwd_composite=[1.0, 1.0],
                bwd_composite=[1.01, composite], log_colsum_single=[0.0, 0.0])


def test_amax_bounds():
    ok = make_study({"mhc": [3.0], "hc": [3.0]}, amax={"tiny-mhc-full-0": _amax(1.3),
                                                         "tiny-hc-full-0": _amax(40.0)})
    assert C.mhc_amax(ok, P, "tiny").verdict == C.REPRODUCED
    assert C.hc_amax(ok, P, "tiny").verdict == C.REPRODUCED
    bad = make_study({"mhc": [3.0], "hc": [3.0]}, amax={"tiny-mhc-full-0": _amax(2.0),
                                                          "tiny-hc-full-0": _amax(1.2)})
    assert C.mhc_amax(bad, P, "tiny").verdict == C.NOT_REPRODUCED
    assert C.hc_amax(bad, P, "tiny").verdict == C.NO_EVIDENCE  # HC's gain has not grown (yet): no contradiction
    grown_less = make_study({"mhc": [3.0], "hc": [3.0]}, amax={"tiny-mhc-full-0": _amax(9.0),
                                                                 "tiny-hc-full-0": _amax(5.0)})
    assert C.hc_amax(grown_less, P, "tiny").verdict == C.NOT_REPRODUCED  # grown, but less than mHC's
    assert C.mhc_amax(make_study({"mhc": [3.0]}), P, "tiny").verdict == C.NO_EVIDENCE


@pytest.mark.parametrize("scores, verdict", [
    ({"residual": [0.20, 0.21], "hc": [0.25, 0.26], "mhc": [0.30, 0.31]}, C.REPRODUCED),
    ({"residual": [0.30, 0.31], "hc": [0.25, 0.26], "mhc": [0.20, 0.21]}, C.NOT_REPRODUCED),
    ({"residual": [0.20], "hc": [0.25], "mhc": [0.30]}, C.NO_EVIDENCE),
])
def test_downstream_ordering(scores, verdict):
    study = make_study({v: [3.0] * len(s) for v, s in scores.items()}, evals=scores)
    assert C.downstream_ordering(study, P, "tiny").verdict == verdict


def test_ablation_ordering():
    ordered = {"residual": [3.00, 3.01], ("mhc", "res"): [2.97, 2.98], ("mhc", "res+pre"): [2.94, 2.95],
               ("mhc", "full"): [2.90, 2.91]}
    assert [c.verdict for c in C.ablation_ordering(make_study(ordered), P, "tiny")] == [C.REPRODUCED]
    reversed_ = {**ordered, ("mhc", "full"): [3.05, 3.06]}
    assert [c.verdict for c in C.ablation_ordering(make_study(reversed_), P, "tiny")] == [C.NOT_REPRODUCED]
    none = C.ablation_ordering(make_study({"residual": [3.0], "mhc": [2.9]}), P, "tiny")
    assert [c.verdict for c in none] == [C.NO_EVIDENCE]


def test_overhead_from_kernel_records(tmp_path):
    study = make_study({"residual": [3.0], "mhc": [2.9]})
    assert C.overhead_claim(study, P, tmp_path).verdict == C.NO_EVIDENCE
    (tmp_path / "bench.json").write_text(json.dumps({"overhead_fraction": 0.05}))
    assert C.overhead_claim(study, P, tmp_path).verdict == C.REPRODUCED
    (tmp_path / "bench.json").write_text(json.dumps({"overhead_fraction": 0.30}))
    assert C.overhead_claim(study, P, tmp_path).verdict == C.NOT_REPRODUCED


def test_overhead_from_bench_mhc_record(tmp_path):
    stack = [dict(C=c, mode=m, variant=v, ms=ms) for c, m, v, ms in (
        (2048, "eager", "residual", 10.0), (2048, "eager", "mhc_fused", 12.0),
        (2560, "eager", "residual", 10.0), (2560, "eager", "mhc_fused", 11.0),
        (2560, "compiled", "residual", 8.0), (2560, "compiled", "mhc_fused", 8.4))]
    (tmp_path / "bench.json").write_text(json.dumps({"stack": stack}))
    assert C.kernel_overheads(tmp_path) == [("bench.json", 2048, pytest.approx(0.2)),
                                            ("bench.json", 2560, pytest.approx(0.05))]
    claim = C.overhead_claim(make_study({"residual": [3.0], "mhc": [2.9]}), P, tmp_path)
    assert claim.verdict == C.REPRODUCED and "C=2560" in claim.evidence


def test_overhead_from_ab_stack_record_and_newer_variant_names(tmp_path):
    """ab_stack.py records (median over rounds of the per-round ratio) and bench_mhc.py rows of any
    fused variant (the default became mhc_fused_linked); CUDA-graph stacks against residual_cg."""
    ab = {"runs": [{"C": 2560, "compiled": True, "ms": {"residual": [10.0, 10.0, 20.0],
                                                         "mhc_fused_linked": [11.0, 12.0, 21.0],
                                                         "mhc_fused_linked_rcops": [13.0, 13.0, 26.0]}},
                   {"C": 4096, "compiled": True, "ms": {"residual": [10.0], "hc_pkg": [10.5]}}]}
    (tmp_path / "ab.json").write_text(json.dumps(ab))
    stack = [dict(C=2048, mode="compiled", variant=v, ms=ms) for v, ms in (
        ("residual", 10.0), ("residual_cg", 8.0), ("mhc_fused_linked", 11.5), ("mhc_fused_linked_cg", 8.8),
        ("mhc_ref", 10.1))]
    (tmp_path / "bench.json").write_text(json.dumps({"stack": stack}))
    found = C.kernel_overheads(tmp_path)
    # ab: ratios 1.1, 1.2, 1.05 -> median 1.1; rcops 1.3; hc_pkg is not a fused stack
    # bench: mhc_fused_linked_cg vs residual_cg 1.1 < 1.15 vs residual; mhc_ref is not fused
    assert found == [("ab.json", 2560, pytest.approx(0.1)), ("bench.json", 2048, pytest.approx(0.1))]
    claim = C.overhead_claim(make_study({"residual": [3.0], "mhc": [2.9]}), P, tmp_path)
    assert claim.verdict == C.NOT_REPRODUCED and "verdict uses C=2560" in claim.evidence
    assert "C=2560: +10.0% (ab.json)" in claim.evidence and "C=2048: +10.0% (bench.json)" in claim.evidence
