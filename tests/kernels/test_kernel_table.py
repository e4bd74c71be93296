"""benchmarks/kernel_bench.bench_kernels on CPU (Triton interpreter, timers stubbed): every row of
the per-kernel table runs, on a bf16 stream and on an fp32 one, the model's under bf16-mixed (run
71's fp32 table had error rows for its cuBLAS yardsticks)."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks"))


@pytest.mark.parametrize("dtype, ref", [(torch.float32, "tf32"), (torch.bfloat16, "bf16")])
def test_kernel_table_has_no_error_rows(fused, launch, device, monkeypatch, dtype, ref):
    if device != "cpu":
        pytest.skip("the CUDA table is the benchmark itself (bench_mhc.py --kernel-stream-dtype float32)")
    import triton.testing

    import kernel_bench

    def once(fn, *a, **k):
        fn()
        return 1.0

    monkeypatch.setattr(triton.testing, "do_bench", once)
    monkeypatch.setattr(triton.testing, "do_bench_cudagraph", once)
    monkeypatch.setattr(torch, "compile", lambda f, **k: f)  # Inductor's Σv² yardstick: eager is enough here
    rows = kernel_bench.bench_kernels(32, 4, 20, "cpu", 1000.0, "bf16x2", stream_dtype=dtype)
    assert [r for r in rows if "error" in r] == []
    assert len(rows) >= 20 and all(r["ms"] == 1.0 and r["gb_s"] > 0 for r in rows)
    assert sum("ref: cuBLAS" in r["kernel"] and f"({ref}" in r["kernel"] for r in rows) == 2
