"""Where a stack step's GPU time goes, kernel by kernel, inside the real step.

``bench_mhc.py`` times each fused kernel alone; this profiles whole steps of the benchmark's stacks
(same blocks, inputs and compile mode) with ``torch.profiler`` and sums every GPU kernel's time per
step, grouped into categories: the mHC Triton kernels (by name), Inductor's generated kernels
(``triton_*``), GEMMs, attention, memory ops and the rest. The difference of each variant to the
first (the baseline) splits the step-time overhead into what the fused kernels take in situ and what
the code around them adds; ``idle`` is the step's wall time under the profiler minus its kernel time
(GPU gaps: the host falling behind, plus the profiler's own cost).

    PYTHONPATH=. python benchmarks/profile_stack.py --C 2048 4096 --variants residual mhc_fused_linked \
        --out prof.json
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import time

import torch
from torch.autograd import DeviceType

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stack_variants import (add_stack_args, check_stack_args, check_variants, kernel_switches,  # noqa: E402
                            launch_settings, stack_inputs, stack_step)
from bench_io import claim_out, require_cuda, write_json  # noqa: E402

from mhc_repro.diagnostics.kernel_profile import (  # noqa: E402,F401  (some re-exported for the tests)
    CATEGORIES, MHC_KERNELS, by_category, category, kernel_rows, kernel_table, summarize)


def profiled_steps(kind, compiled, c, n, n_blocks, x0, dout, steps: int, warmup: int = 3,
                   **profile_opts) -> tuple:
    """(profiler, wall µs per step) of ``steps`` steps of one variant after ``warmup`` unprofiled ones,
    built and run under its kernel switches; ``profile_opts`` go to torch.profiler.profile."""
    cuda = x0.is_cuda
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with kernel_switches(kind):
        step, _, blocks = stack_step(kind, compiled, c, n, n_blocks, x0, dout)
        for _ in range(warmup):
            step()
        sync()
        with torch.profiler.profile(activities=acts, **profile_opts) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            sync()
            wall_us = 1e6 * (time.perf_counter() - t0) / steps
    del blocks
    return prof, wall_us


def profile_variant(kind, compiled, c, n, n_blocks, x0, dout, steps: int = 3, warmup: int = 3) -> dict:
    """Kernel table and wall time per step of one variant (built and run under its kernel switches)."""
    prof, wall_us = profiled_steps(kind, compiled, c, n, n_blocks, x0, dout, steps, warmup)
    return dict(variant=kind, C=c, blocks=n_blocks, compiled=compiled,
                **summarize(prof, steps, wall_us, x0.is_cuda, full=True))


def trace_kernels(kind, compiled, c, n, n_blocks, x0, dout, patterns, warmup: int = 3) -> list[dict]:
    """Where the GPU kernels whose names contain any of ``patterns`` come from: one profiled step
    with shapes and Python stacks; per launching operator (its parents, input shapes, the innermost
    Python frames outside torch) the calls and µs. Finds the eager copies and small kernels that a
    compiled step still runs (custom-op launchers, layout fix-ups)."""
    cuda = x0.is_cuda
    prof, _ = profiled_steps(kind, compiled, c, n, n_blocks, x0, dout, 1, warmup, record_shapes=True,
                             with_stack=True)
    found = collections.defaultdict(lambda: dict(calls=0, us=0.0))
    for e in prof.events():
        if e.device_type != DeviceType.CPU:
            continue
        if cuda:  # the GPU kernels this operator launched itself
            hits = [(k.name, k.duration) for k in e.kernels if any(p in k.name for p in patterns)]
        else:  # CPU (tests): the operator itself
            hits = [(e.name, e.self_cpu_time_total)] if any(p in e.name for p in patterns) else []
        if not hits:
            continue
        chain, p = [e.name], e.cpu_parent
        while p is not None and len(chain) < 8:  # operators, then Python frames (with_stack)
            chain.append(re.sub(r" at 0x[0-9a-f]+", "", p.name))
            p = p.cpu_parent
        frames = [f for f in (e.stack or []) if "/torch/" not in f][:3]
        key = (" <- ".join(chain), str(e.input_shapes)[:160], " | ".join(frames), hits[0][0][:120])
        found[key]["calls"] += 1
        found[key]["us"] += sum(t for _, t in hits)
    rows = [dict(ops=k[0], shapes=k[1], python=k[2], kernel=k[3], **v) for k, v in found.items()]
    return sorted(rows, key=lambda r: -r["us"])


def print_profiles(runs: list[dict], top: int = 25) -> None:
    """Per C: categories of every variant and its difference to the first, per step and per
    sub-layer; then the variants' kernels that the baseline does not run, or runs for less time."""
    for c in sorted({r["C"] for r in runs}):
        rs = [r for r in runs if r["C"] == c]
        base, sub = rs[0], 2 * rs[0]["blocks"]
        print(f"\nC = {c}, {base['blocks']} blocks ({sub} sub-layers), µs per step "
              f"(Δ: minus {base['variant']}; /sub-layer: Δ / {sub})")
        print(f"  {'':12}" + "".join(f"{r['variant'][:24]:>26}" for r in rs))
        for cat in (*CATEGORIES, "kernel", "idle", "wall"):
            vals = [r["categories"][cat] if cat in CATEGORIES else r[f"{cat}_us"] for r in rs]
            cells = [f"{v:11.0f}" + ("" if i == 0 else f" Δ{v - vals[0]:+8.0f} {(v - vals[0]) / sub:+5.0f}")
                     for i, v in enumerate(vals)]
            print(f"  {cat:12}" + "".join(f"{s:>26}" for s in cells))
        for r in rs[1:]:
            print(f"\n  {r['variant']} kernels over {base['variant']}'s (top {top} by Δ µs/step; calls/step;"
                  f" Inductor kernels matched by name without their index)")
            mine, theirs = grouped(r["kernels"]), grouped(base["kernels"])
            rows = [(k["us"] - theirs.get(name, {}).get("us", 0.0), name, k) for name, k in mine.items()]
            for d, name, k in sorted(rows, reverse=True)[:top]:
                print(f"    {d:9.1f} {d / sub:7.1f}/sub  {k['calls']:5.0f}x  {k['category']:9} {name[:90]}")


def grouped(table: dict) -> dict:
    """The kernel table with Inductor's kernels merged by name minus their trailing index (the same
    fused kernel is ``triton_poi_fused_add_3`` in one graph and ``..._5`` in another)."""
    out = {}
    for name, k in table.items():
        key = re.sub(r"_\d+$", "", name) if k["category"] == "inductor" else name
        row = out.setdefault(key, dict(category=k["category"], calls=0.0, us=0.0))
        row["calls"] += k["calls"]
        row["us"] += k["us"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--C", type=int, nargs="+", default=[2048])
    ap.add_argument("--variants", nargs="+", default=["residual", "mhc_fused_linked"],
                    help="bench_mhc.py variant names; the first is the baseline of the differences")
    add_stack_args(ap)
    ap.add_argument("--eager", action="store_true", help="profile eager blocks (default: torch.compile)")
    ap.add_argument("--steps", type=int, default=3, help="profiled steps per variant (after 3 warm-up steps)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--set", nargs="*", default=(), metavar="NAME=VALUE",
                    help="set mhc_repro.kernels.launch constants first (Python literals)")
    ap.add_argument("--trace", nargs="*", default=(), metavar="NAME_PART",
                    help="also list the operators and Python lines that launch kernels whose names contain these")
    ap.add_argument("--commit", default=os.environ.get("GIT_COMMIT", "unknown"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    check_stack_args(ap, args)
    check_variants(ap, args.variants)
    claim_out(ap, args.out)
    require_cuda("profile_stack.py")
    dev = torch.device("cuda")
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, commit=args.commit, argv=sys.argv,
               settings=launch_settings(args.set), runs=[], complete=False)
    for c in args.C:
        nb, x0, dout = stack_inputs(c, args, dev)
        for kind in args.variants:
            r = profile_variant(kind, not args.eager, c, args.n, nb, x0, dout, args.steps)
            print(f"C={c} {kind}: wall {r['wall_us'] / 1e3:.2f} ms/step, kernels {r['kernel_us'] / 1e3:.2f} ms",
                  flush=True)
            res["runs"].append(r)
            if args.trace and kind != args.variants[0]:
                r["trace"] = trace_kernels(kind, not args.eager, c, args.n, nb, x0, dout, args.trace)
                for t in r["trace"][:40]:
                    print(f"  {t['us']:8.1f} us {t['calls']:3}x {t['kernel'][:60]}\n      ops: {t['ops']}\n"
                          f"      shapes: {t['shapes']}\n      python: {t['python']}", flush=True)
            torch._dynamo.reset()
            torch.cuda.empty_cache()
            if args.out:  # after every variant: a run cut short by the device's time limit keeps what it has
                write_json(args.out, res)
    res["complete"] = True
    if args.out:
        write_json(args.out, res)
    print(f"\n{res['device']} | torch {res['torch']} | commit {res['commit']}")
    print_profiles(res["runs"], args.top)


if __name__ == "__main__":
    main()
