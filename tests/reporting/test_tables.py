import math

from mhc_repro.reporting.paper_data import load_paper_numbers
from mhc_repro.reporting.tables import Table, human, latex_escape, mean_sd, signed, to_latex, to_markdown


def test_paper_numbers_are_complete():
    p = load_paper_numbers()
    assert p.tasks == ("bbh", "drop", "gsm8k", "hellaswag", "math", "mmlu", "piqa", "triviaqa")
    assert p.table4["mhc"]["bbh"] == 51.0 and p.task_shots["hellaswag"] == 10
    assert math.isclose(p.compute("27b"), 6 * 4.14e9 * 262e9)
    assert p.overhead == 0.067 and p.loss["mhc_gap_27b"] == -0.021


def test_latex_escaping():
    assert latex_escape("a_b & 5% #1 {x} ~ ^ \\") == r"a\_b \& 5\% \#1 \{x\} \textasciitilde{} \textasciicircum{} \textbackslash{}"
    assert latex_escape("1.0 ± 0.2, Δ -0.5, res+pre") == r"1.0 $\pm$ 0.2, $\Delta$ $-$0.5, res+pre"


def test_formatting_is_fixed():
    assert mean_sd([0.5]) == "0.5" and mean_sd([]) == "—"
    assert mean_sd([0.2, 0.3], scale=100) == "25.0 ± 7.1"
    assert human(1_234_567) == "1.23M" and human(float("nan")) == "—"
    assert signed(-0.00001, 2) == "+0.00" and signed(-0.5, 1) == "-0.5"


def test_renderers():
    t = Table(["A", "B_c"], [["Metric", "EM"]], [["x", "1 ± 2"], ["y", "3"]], "cap 50%", "tab:x", {1})
    assert to_markdown(t).splitlines()[:3] == ["| A | B_c |", "| --- | ---: |", "| *Metric* | EM |"]
    tex = to_latex(t)
    assert r"\toprule" in tex and tex.count(r"\midrule") == 2 and "B\\_c" in tex and "cap 50\\%" in tex


def test_seed_counts_are_the_values_shown():
    from reporting_fixtures import make_study

    from mhc_repro.reporting.tables import table1, table4

    p = load_paper_numbers()
    study = make_study({"residual": [3.0, 3.1], "mhc": [2.9, 2.95], ("mhc", "res"): [2.97, math.nan]},
                       evals={"residual": [0.3, 0.31], "mhc": [0.4, 0.41]})
    ev = study.evals
    study.evals = ev[ev.train_run_id != "tiny-mhc-full-1"]  # the second mHC seed was not evaluated
    rows = {r[0]: r for r in table4(study, p)[0].body}
    assert rows["Baseline — tiny (n=2)"][1] == "30.5 ± 0.7"
    assert rows["w/ mHC — tiny (n=1)"][1] == "40.0"
    assert rows["w/ HC — tiny (n=0)"][1] == "—"
    res = next(r for r in table1(study, p)[0].body if r[0] == "w/ mHC (res)")
    assert res[4:6] == ["1", "2.9700"]  # the run without a validation loss is not counted
