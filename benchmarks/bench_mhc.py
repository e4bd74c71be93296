"""mHC overhead benchmark: fwd+bwd of a stack of Llama-style blocks, one process, same inputs.

Variants (each at every C, eager and compiled): `residual` (Pre-Norm), `mhc_ref` (reference mHC),
`hc_pkg` (the `hyper-connections` package's mHC: optional extra `.[bench]`, see hc_package.py;
recorded as skipped when not importable) and the fused Triton mHC — `mhc_fused_linked_fnorm` (the
model's defaults: linked sub-layer, the branch's RMSNorm fused into pre, "bf16x2" projections; by
default also with `_rcops`), `mhc_fused` (the three ops). Name parts:
`_bf16` "bf16" projections; `_linked` the linked pair (kernels/linked.py; `_gather` LINK_MODE
"gather", `_copy` "add" into a new buffer); `_rc` / `_rcops` / `_rcpost` each block under the paper's
recomputation (mhc_repro.residual.recompute, "stream" / "stream-ops"; `_savebc`: "stream-ops" saving
the first block's copy of the broadcast input, see recompute.COPY_OPS); `_2mma` launch.PROJ_FWD_MERGED off;
`_ptr` the pointer dx pass (launch._PROJ_BWD_TMA None); `_acc` / `_mmasum` launch.PROJ_DX_TMA_ACC on / off;
`_dphi` launch.PROJ_DX_TMA_DPHI on (dφ formed in the TMA dx pass; `ab_stack.py --variant-set` gives one variant its own tile);
`_fnorm` (with `_linked`) the branch's RMSNorm fused into pre (kernels/norm_kernels.py); `_lazy` H_resᵀg left to Inductor;
`_expout` (a suffix) the streams expanded before the compiled first block, the layout up to session 17;
`_gcopy` post_res_bwd copying its stream gradient contiguous first (launch.PRB_G_BY_STRIDES off); `_cg` blocks compiled with CUDA graphs ("reduce-overhead"; compare
with `residual_cg`); `_xl` (with `_linked`, no recompute part) the cross-layer handoff: each post op also
forms the next sub-layer's projection, across the block boundary too (kernels/cross_layer.py: the Gluon
kernel on sm_90 with a bf16 stream, else post_res + proj_fwd), `_xlpair` the same with always the Triton pair; `_2s` the step as two half batches
in flight on two CUDA streams, blocks issued in turn (stack_variants.two_stream_step; compare with `residual_2s`). Each stack row also gives the host's time per step (`host_ms`) beside the time to
completion (`queued_ms`). Then every fused kernel alone, its achieved GB/s against a
device-to-device copy measured in the same run.

    PYTHONPATH=. python benchmarks/bench_mhc.py --C 2048 2560 4096 --tokens 16384 --out reports/kernels/bench.json

"Compiled" = each block under torch.compile (the fused kernels are custom ops, opaque to Inductor);
ratios compare like with like (eager/eager, compiled/compiled).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kernel_bench import SWEEP, bench_kernels, copy_bandwidth, machine_probe, sweep_configs  # noqa: E402,F401
from stack_variants import (LAZY_PRB, PRECISION, _hc_pkg_version, add_stack_args, check_stack_args,  # noqa: E402
                            check_variants, kernel_switches, launch_settings, stack_inputs, stack_step,
                            variant_parts)
from bench_io import claim_out, require_cuda, write_json  # noqa: E402


def time_cuda(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        ts.append(s.elapsed_time(e))
    ts.sort()
    return ts[len(ts) // 2]


def host_time(fn, iters: int) -> tuple[float, float]:
    """(host ms, ms to completion) per call over ``iters`` back-to-back calls. Host time close to the
    total means the host, not the GPU, sets the pace (the launch queue never fills)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    return 1e3 * (t1 - t0) / iters, 1e3 * (t2 - t0) / iters


def sync_points(fn) -> list[str]:
    """Where fn makes the host wait for the GPU: one call under torch.cuda.set_sync_debug_mode("warn"),
    each distinct warning as "file:line: message". (Run 34: mHC's host time per step, 45-48 ms at both
    C, says its step waits somewhere; the residual's does not at C = 4096.)"""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sorted({f"{w.filename}:{w.lineno}: {str(w.message)[:160]}" for w in caught})


def bench_stack(kind, compiled, c, n, n_blocks, x0, dout, args):
    if variant_parts(kind)[0] == "hc_pkg" and _hc_pkg_version() is None:
        return dict(error="hyper-connections not importable: skipped")
    with kernel_switches(kind):
        return _bench_stack(kind.removesuffix("_lazy"), compiled, c, n, n_blocks, x0, dout, args)


def _bench_stack(kind, compiled, c, n, n_blocks, x0, dout, args):
    step, forward, blocks = stack_step(kind, compiled, c, n, n_blocks, x0, dout)
    params = list(blocks.parameters())
    t0 = time.time()
    step()  # compile / autotune
    torch.cuda.synchronize()
    first = time.time() - t0
    ms = time_cuda(step, args.warmup, args.iters)
    host_ms, queued_ms = host_time(step, args.iters)
    syncs = sync_points(step) if getattr(args, "sync_debug", False) else None
    for p in params:
        p.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = forward()  # the step, split to see whether the peak falls in the forward or the backward
    torch.cuda.synchronize()
    fwd_peak = torch.cuda.max_memory_allocated()
    out.backward(dout)
    del out
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    # What the step itself holds at its peak: its parameters, inputs and input gradient, plus what it
    # allocates. The raw max_memory_allocated also counts whatever earlier variants of the process left
    # allocated (compiled-graph state: 0-3 GB that varied from run to run, runs 14-20), so it is kept
    # only as peak_abs_gb.
    held = [*params, x0, dout] + ([x0.grad] if x0.grad is not None else [])
    own = sum(t.numel() * t.element_size() for t in held)
    del blocks, params, step, forward
    if compiled:
        torch._dynamo.reset()
    torch.cuda.empty_cache()
    gb = 2**30
    return dict(ms=ms, peak_gb=(own + peak - base) / gb, fwd_peak_gb=(own + fwd_peak - base) / gb,
                act_gb=(peak - base) / gb, peak_abs_gb=peak / gb, first_step_s=first, host_ms=host_ms,
                queued_ms=queued_ms, **({} if syncs is None else dict(sync_points=syncs)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--C", type=int, nargs="+", default=[2048, 2560, 4096])
    add_stack_args(ap)
    ap.add_argument("--variants", nargs="+",
                    # the model's defaults (linked pair, branch norm fused into pre) with and without
                    # recompute="stream-ops", beside what the issue compares them with
                    default=["residual", "mhc_ref", "mhc_fused_linked_fnorm", "mhc_fused_linked_fnorm_rcops", "hc_pkg"])
    ap.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=1e9, help="skip remaining stack runs after this")
    ap.add_argument("--sweep", action="store_true", help="sweep kernel tiles first, keep the fastest")
    ap.add_argument("--sweep-only", nargs="*", default=(), help="sweep only these SWEEP entries")
    ap.add_argument("--no-kernels", action="store_true", help="skip the per-kernel GB/s table")
    ap.add_argument("--kernel-stream-dtype", default="bfloat16", choices=["bfloat16", "float32"],
                    help="stream dtype of the per-kernel table and --sweep (float32: the model's stream under bf16-mixed)")
    ap.add_argument("--precision", default="bf16x2", choices=["bf16x2", "bf16"],
                    help="projection operands of variant mhc_fused (mhc_fused_bf16 is always bf16)")
    ap.add_argument("--set", nargs="*", default=(), metavar="NAME=VALUE",
                    help="set mhc_repro.kernels.launch constants first (Python literals), e.g. PROJ_FWD_MERGED=False")
    ap.add_argument("--sync-debug", action="store_true",
                    help="record where each variant's step makes the host wait for the GPU (one extra step)")
    ap.add_argument("--commit", default=os.environ.get("GIT_COMMIT", "unknown"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    check_stack_args(ap, args)
    check_variants(ap, args.variants)
    if args.iters < 1 or args.warmup < 0:
        ap.error(f"--iters {args.iters} / --warmup {args.warmup}: need >= 1 timed and >= 0 warm-up steps")
    claim_out(ap, args.out)
    require_cuda("bench_mhc.py")
    dev = torch.device("cuda")
    PRECISION[0] = args.precision
    launch_settings(args.set)
    t_start = time.time()
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
               triton=__import__("triton").__version__, commit=args.commit, argv=sys.argv, stack=[], kernels=[])
    res["hyper_connections"] = _hc_pkg_version() or "not importable: skipped"
    res["copy_gb_s"] = copy_gbs = copy_bandwidth(dev)
    print(f"copy bandwidth (read+write): {copy_gbs:.0f} GB/s", flush=True)
    res["probe_start"] = machine_probe(dev)
    print("probe (bf16 GEMM TFLOP/s, GPU state):", res["probe_start"], flush=True)

    def dump():
        if args.out:  # rewritten after every row (its own partial record), atomically
            write_json(args.out, res)

    stream_dtype = getattr(torch, args.kernel_stream_dtype)  # of the kernel table and the sweep
    if args.sweep:
        from mhc_repro.kernels import launch

        rows, best = sweep_configs(args.C[0], args.n, args.tokens, dev, args.precision, args.sweep_only,
                                   stream_dtype)
        res["sweep"] = rows
        res["probe_after_sweep"] = machine_probe(dev)
        print("probe after the sweep:", res["probe_after_sweep"], flush=True)
        for r in rows:
            print(json.dumps(r), flush=True)
        for name, (_, cand) in best.items():
            if name in SWEEP:
                setattr(launch, name, cand)
        LAZY_PRB[0] = best.get("_PRB_mma", (0, LAZY_PRB[0]))[1]
        res["chosen"] = best
        print("chosen:", res["chosen"], flush=True)
    for c in [] if args.no_kernels else args.C:
        res["kernels"] += bench_kernels(c, args.n, args.tokens, dev, copy_gbs, args.precision, stream_dtype)
        dump()
    for c in args.C:
        nb, x0, dout = stack_inputs(c, args, dev)
        for mode in args.modes:
            for kind in args.variants:
                if time.time() - t_start > args.budget_s:
                    print(f"budget exhausted: skip C={c} {kind} {mode}", flush=True)
                    continue
                try:
                    r = bench_stack(kind, mode == "compiled", c, args.n, nb, x0, dout, args)
                except Exception as exc:  # report and carry on: one failing variant must not lose the rest
                    r = dict(error=f"{type(exc).__name__}: {exc}"[:500])
                r.update(C=c, blocks=nb, variant=kind, mode=mode)
                res["stack"].append(r)
                print(json.dumps(r), flush=True)
                dump()
    res["probe_end"] = machine_probe(dev)
    res["wall_s"] = time.time() - t_start
    dump()
    print_tables(res)


def print_tables(res) -> None:
    print(f"\n{res['device']} | torch {res['torch']} | triton {res['triton']} | commit {res['commit']}")
    print(f"copy {res['copy_gb_s']:.0f} GB/s; hyper-connections: {res['hyper_connections']}")
    if "probe_end" in res:  # runs before 32 have no probe
        print(f"bf16 GEMM {res['probe_start']['gemm_tflops']:.0f} TFLOP/s at the start, "
              f"{res['probe_end']['gemm_tflops']:.0f} at the end (a drop means slowed clocks: compute-bound rows slow too)")
    print(f"{'C':>5} {'blk':>3} {'mode':9} {'variant':10} {'ms/step':>8} {'x resid':>8} {'peak GB':>8} {'x peak':>7} "
          f"{'fwd pk':>7} {'host ms':>8}")
    # *_cg rows against residual_cg (CUDA graphs on both sides), the rest against residual
    base = {(r["C"], r["mode"], "_cg" in r["variant"]): r for r in res["stack"]
            if r["variant"] in ("residual", "residual_cg") and "ms" in r}
    for r in res["stack"]:
        if "ms" not in r:
            print(f"{r['C']:>5} {r['blocks']:>3} {r['mode']:9} {r['variant']:10} {r['error']}")
            continue
        b = base.get((r["C"], r["mode"], "_cg" in r["variant"]))
        rt = f"{r['ms'] / b['ms']:.3f}" if b else "-"
        rp = f"{r['peak_gb'] / b['peak_gb']:.3f}" if b and "_cg" not in r["variant"] else "-"  # graph pools: not counted
        fp = r.get("fwd_peak_gb", float("nan"))
        print(f"{r['C']:>5} {r['blocks']:>3} {r['mode']:9} {r['variant']:10} {r['ms']:8.2f} {rt:>8} "
              f"{r['peak_gb']:8.2f} {rp:>7} {fp:7.2f} {r.get('host_ms', float('nan')):8.2f}")
    print(f"\n{'C':>5} {'kernel':44} {'us':>8} {'GB/s':>7} {'of copy':>7} {'launched us':>11}")
    for k in res["kernels"]:
        if "error" in k:
            print(f"{k['C']:>5} {k['kernel']:44} {k['error']}")
            continue
        print(f"{k['C']:>5} {k['kernel']:44} {1000 * k['ms']:8.1f} {k['gb_s']:7.0f} {100 * k['frac_copy']:6.1f}% "
              f"{1000 * k.get('ms_launched', float('nan')):11.1f}")


if __name__ == "__main__":
    main()
