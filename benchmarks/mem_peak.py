"""What is alive at the peak of one benchmark step: a CUDA memory-history replay.

    PYTHONPATH=. python benchmarks/mem_peak.py --C 4096 --variants residual mhc_fused_linked_rcops --out peak.json

Builds a variant exactly as bench_mhc.py does, runs one step to compile, then records the allocator's
history over one more step and replays it: the step's peak (bytes allocated since the step began),
whether it falls in forward or backward, and the live allocations at that moment grouped by size and
by the innermost frame of this repository or of Inductor's generated code that allocated them.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stack_variants  # noqa: E402


def _where(frames) -> str:
    """Innermost frame from the repository, Inductor's output code or torch.autograd, else the first."""
    for key in ("mhc_repro", "benchmarks", "torchinductor", "autograd", "checkpoint"):
        for f in frames:
            if key in f.get("filename", ""):
                return f"{os.path.basename(f['filename'])}:{f['line']} {f['name']}"
    return f"{os.path.basename(frames[0]['filename'])}:{frames[0]['line']} {frames[0]['name']}" if frames else "?"


def replay(trace, unit: int, n_fwd: int | None = None):
    """Peak of the allocations made during the trace and what was live then (with ``n_fwd``, the
    number of events of the forward, each allocation is tagged fwd / bwd)."""
    live, cur, peak, at_peak, peak_i = {}, 0, 0, {}, -1
    for i, e in enumerate(trace):
        if e["action"] == "alloc":
            where = _where(e.get("frames", []))
            if n_fwd is not None:
                where = f"[{'fwd' if i < n_fwd else 'bwd'}] {where}"
            live[e["addr"]] = (e["size"], where, e.get("frames", []))
            cur += e["size"]
            if cur > peak:
                peak, at_peak, peak_i = cur, dict(live), i
        elif e["action"] in ("free_requested", "free_completed") and e["addr"] in live:
            cur -= live.pop(e["addr"])[0]  # memory_allocated drops at the request
    groups = collections.defaultdict(lambda: [0, 0])
    stacks = {}
    for size, where, frames in at_peak.values():
        stacks.setdefault(where, [f"{os.path.basename(f['filename'])}:{f['line']} {f['name']}" for f in frames
                                  if f.get("filename", "").endswith(".py")])  # Python frames only
        groups[(round(size / unit, 2), where)][0] += 1
        groups[(round(size / unit, 2), where)][1] += size
    rows = sorted(((b, n, u, w) for (u, w), (n, b) in groups.items()), reverse=True)
    cause = trace[peak_i] if peak_i >= 0 else {}
    rows = [dict(gb=b / 2**30, count=n, units=u, where=w, stack=stacks[w][:24]) for b, n, u, w in rows]
    return peak, rows, _where(cause.get("frames", [])), peak_i


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--C", type=int, default=4096)
    ap.add_argument("--blocks", type=int, default=None, help="default: bench_mhc's (4, 2 for C >= 4096)")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--variants", nargs="+", default=["residual", "mhc_fused_linked_rcops"])
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--stack-for", default=None, help="print the stack of live groups whose frame has this")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from bench_io import claim_out, require_cuda, write_json

    stack_variants.check_variants(ap, args.variants)
    claim_out(ap, args.out)
    require_cuda("mem_peak.py")
    dev, c = torch.device("cuda"), args.C
    nb = args.blocks or (4 if c < 4096 else 2)
    g = torch.Generator(device=dev).manual_seed(c)
    x0 = torch.randn(args.tokens // args.seq, args.seq, c, device=dev, dtype=torch.bfloat16, generator=g)
    x0.requires_grad_()
    dout = torch.randn(x0.shape, device=dev, dtype=x0.dtype, generator=g)  # seeded like x0: reruns compare
    unit = args.tokens * c * 2  # one bf16 [N, C] tensor
    res = dict(C=c, blocks=nb, unit_mb=unit / 2**20, variants={})
    for kind in args.variants:
        with stack_variants.kernel_switches(kind):
            blocks, fns = stack_variants.build(kind, c, args.n, nb, True, dev)

            def forward():
                return stack_variants.stack_forward(fns, x0)

            forward().backward(dout)  # compile
            for p in blocks.parameters():
                p.grad = None
            torch.cuda.synchronize()
            torch.cuda.memory._record_memory_history(max_entries=1_000_000)
            out = forward()
            n_fwd = len(torch.cuda.memory._snapshot()["device_traces"][dev.index or 0])
            out.backward(dout)
            del out
            torch.cuda.synchronize()
            trace = torch.cuda.memory._snapshot()["device_traces"][dev.index or 0]
            torch.cuda.memory._record_memory_history(enabled=None)
            peak, rows, cause, peak_i = replay(trace, unit, n_fwd)
            res["variants"][kind] = dict(step_peak_gb=peak / 2**30, step_peak_units=peak / unit, trigger=cause,
                                         in_backward=peak_i >= n_fwd, live_at_peak=rows[:args.top])
            del blocks, fns
            torch._dynamo.reset()
            torch.cuda.empty_cache()
        v = res["variants"][kind]
        print(f"\n{kind}: step peak {v['step_peak_gb']:.3f} GB = {v['step_peak_units']:.1f} units of [N, C] "
              f"({res['unit_mb']:.0f} MB), in the {'backward' if v['in_backward'] else 'forward'}; "
              f"reached by: {v['trigger']}")
        for r in v["live_at_peak"]:
            print(f"  {r['gb']:7.3f} GB  {r['count']:3d} x {r['units']:6.2f} u  {r['where']}")
            if args.stack_for and args.stack_for in r["where"]:
                print("      " + "\n      ".join(r["stack"]))
    if args.out:
        write_json(args.out, res)


if __name__ == "__main__":
    main()
