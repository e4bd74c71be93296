"""The benchmarks' compute-speed probe (benchmarks/kernel_bench.py): GEMM throughput from the measured
time, and nvidia-smi's answer parsed field by field (or None where it is missing)."""

import os
import subprocess
import sys
import types

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks"))
import kernel_bench  # noqa: E402


def test_gemm_tflops_is_flops_over_measured_time(monkeypatch):
    pytest.importorskip("triton")
    import triton.testing

    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: (fn(), 2.0)[1])  # 2 ms per GEMM
    assert kernel_bench.gemm_tflops("cpu", size=64) == pytest.approx(2 * 64**3 / 2.0 / 1e9)


def test_gpu_state_parses_fields_and_survives_a_missing_nvidia_smi(monkeypatch):
    answer = "1980 MHz, 1980 MHz, 41, 120.50 W, 0x0000000000000000\n"
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: types.SimpleNamespace(stdout=answer))
    state = kernel_bench.gpu_state()
    assert state["clocks.sm"] == "1980 MHz" and state["clocks_throttle_reasons.active"] == "0x0000000000000000"
    assert list(state) == list(kernel_bench.GPU_STATE_FIELDS)

    def missing(*a, **k):
        raise FileNotFoundError("nvidia-smi")

    monkeypatch.setattr(subprocess, "run", missing)
    assert kernel_bench.gpu_state() is None
