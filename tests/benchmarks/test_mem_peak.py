"""benchmarks/mem_peak.py's replay of an allocator history (the CUDA recording itself needs a GPU)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import mem_peak  # noqa: E402


def _ev(action, addr, size, where="mhc_repro/x.py"):
    return dict(action=action, addr=addr, size=size, frames=[dict(filename=where, line=1, name="f")])


def test_replay_finds_the_peak_and_what_was_live():
    trace = [_ev("alloc", 1, 400), _ev("alloc", 2, 100, "benchmarks/y.py"), _ev("free_requested", 1, 400),
             _ev("free_completed", 1, 400), _ev("alloc", 3, 200), _ev("alloc", 4, 100)]
    peak, rows, cause, i = mem_peak.replay(trace, unit=100)
    assert peak == 500 and i == 1  # 400 + 100 before the free; 100 + 200 + 100 = 400 later
    assert cause == "y.py:1 f"
    assert sorted((r["units"], r["count"]) for r in rows) == [(1.0, 1), (4.0, 1)]


def test_replay_counts_a_free_once():
    trace = [_ev("alloc", 1, 300), _ev("free_requested", 1, 300), _ev("free_completed", 1, 300),
             _ev("alloc", 2, 200), _ev("alloc", 3, 200)]
    peak, rows, _, i = mem_peak.replay(trace, unit=100)
    assert peak == 400 and i == 4 and sum(r["count"] for r in rows) == 2
