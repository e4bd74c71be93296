"""benchmarks/sweep_grid.py's command line: grid specs parse to the combinations it runs, and bad specs,
ops and names fail with one line naming them (the sweep itself needs CUDA)."""

import os
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import sweep_grid  # noqa: E402
from sweep_grid import parse_grid  # noqa: E402


def test_grid_specs_single_and_joint():
    g = parse_grid(["PRE_NORM_BWD_PREFETCH+PRE_NORM_BWD_STAGES=[(1, 0), (0, 2)]", "PROJ_DX_TMA_ACC=[False, True]"])
    assert g == {("PRE_NORM_BWD_PREFETCH", "PRE_NORM_BWD_STAGES"): [(1, 0), (0, 2)],
                 ("PROJ_DX_TMA_ACC",): [(False,), (True,)]}


@pytest.mark.parametrize("spec,msg", [("A=1,2", "expected NAME=\\[V1, V2, ...\\]"), ("A=[]", "expected NAME"),
                                      ("A+B=[(1, 2, 3)]", "each value must be a tuple of 2")])
def test_bad_grid_specs(spec, msg):
    with pytest.raises(SystemExit, match=msg):
        parse_grid([spec])


@pytest.mark.parametrize("args,msg", [(["--op", "nope"], "--op 'nope' is unknown; allowed: "),
                                      (["--op", "_PRE_NORM_BWD", "--grid", "FOO=[1]"],
                                       "--grid 'FOO': not a constant of mhc_repro.kernels.launch")])
def test_bad_arguments_fail_with_one_line(args, msg, monkeypatch):
    # main() in this process (a process of its own costs ~5 s of imports): a SystemExit with a one-line
    # message is what Python prints as the process's only stderr line, exit status 1
    monkeypatch.setattr(sys, "argv", ["sweep_grid.py", *args])
    with pytest.raises(SystemExit) as e:
        sweep_grid.main()
    assert isinstance(e.value.code, str) and "\n" not in e.value.code and msg in e.value.code
