"""benchmarks/kernel_bench.py's per-kernel table and tile sweep run their whole code path on CPU
(interpreter kernels, a stand-in timer): they only ever run on the GPU otherwise, so a broken name
there would first show up in a device call."""

import os
import sys

import pytest
import torch

from .conftest import INTERPRET

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import kernel_bench  # noqa: E402


@pytest.mark.skipif(not INTERPRET, reason="CPU tensors need TRITON_INTERPRET=1 (no CUDA)")
def test_kernel_table_and_sweep_on_cpu(fused, launch, monkeypatch):
    import triton.testing

    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: (fn(), 1.0)[1])
    monkeypatch.setattr(triton.testing, "do_bench_cudagraph", lambda fn, **kw: (fn(), 0.5)[1])
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)  # the Inductor Σv² yardstick, eager here
    rows = kernel_bench.bench_kernels(16, 4, 8, "cpu", 1000.0, "bf16x2")
    names, table = [r["kernel"] for r in rows], rows
    assert any("linked add" in k for k in names)
    # device time from the graph replay, plain launches beside it
    assert all(r["ms"] == 0.5 and r["ms_launched"] == 1.0 and r["gb_s"] > 0 for r in rows)
    # each row says it was timed on the graph replay; live memory is recorded on CUDA only
    assert all(r["cuda_graph"] is True and r["allocated_gb"] is None for r in rows)
    swept = ("_PRB", "_SINKHORN", "_PRE_NORM")
    before = [getattr(launch, k) for k in swept]
    # the sweep's code path, not every candidate (37 under the interpreter, ~0.3 s each: a failing one is
    # only an error row there): the first two candidates of each op and the first of each post_res_bwd mode
    sub = {k: (v[:2] if not k.startswith("_PRB") else list({c[0]: c for c in reversed(v)}.values())[::-1])
           for k, v in kernel_bench.SWEEP.items()}
    assert all(sub[k][0] == kernel_bench.SWEEP[k][0] for k in sub)
    assert {c[0] for c in sub["_PRB"]} == {c[0] for c in kernel_bench.SWEEP["_PRB"]}
    monkeypatch.setattr(kernel_bench, "SWEEP", sub)
    rows, best = kernel_bench.sweep_configs(16, 4, 8, "cpu", "bf16x2", only=swept)
    assert [r for r in rows if "error" in r] == [] and len(rows) == 7  # 3 + 2 + 2 candidates, every one ran
    assert {r["op"] for r in rows} == set(swept)
    assert all(best[k][1] in kernel_bench.SWEEP[k] for k in swept), best
    assert [getattr(launch, k) for k in swept] == before  # the sweep restores the defaults
    # an fp32 stream sweeps post_res_bwd's fp32 tile, not the bf16 one, and restores it
    rows, best = kernel_bench.sweep_configs(16, 4, 8, "cpu", "bf16x2", ("_PRB", "_PRB_FP32"), torch.float32)
    assert {r["op"] for r in rows} == {"_PRB_FP32"} and "_PRB_FP32" in best
    assert (launch._PRB, launch._PRB_FP32) == (before[0], kernel_bench.SWEEP["_PRB_FP32"][0])
    # an fp32 stream (the model's under bf16-mixed): every row timed, the cuBLAS yardsticks at tf32
    # (bf16 products of fp32 operands were error rows in runs 73 and 75)
    rows32 = kernel_bench.bench_kernels(16, 4, 8, "cpu", 1000.0, "bf16x2", torch.float32)
    assert [r["kernel"].replace("(tf32", "(bf16") for r in rows32] == names
    assert sum("ref: cuBLAS" in r["kernel"] and "(tf32" in r["kernel"] for r in rows32) == 2
    assert [r for r in rows32 if "error" in r] == []
    timed = rows32
    assert any(r["kernel"] == "post_res_bwd" for r in timed)
    assert all(r["gb_s"] == 2 * g["gb_s"] for r in timed for g in table if g["kernel"] == r["kernel"]
               and r["kernel"] in ("pre", "post_res", "post_res_bwd"))  # twice the bytes per element


def test_gpu_time_falls_back_to_plain_launches(monkeypatch):
    import triton.testing

    def no_capture(fn, **kw):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(triton.testing, "do_bench_cudagraph", no_capture)
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: 3.0)
    assert kernel_bench.gpu_time(lambda: None) == 3.0
    assert kernel_bench.gpu_time_how(lambda: None) == (3.0, False)
