"""Interleaved A/B timing of benchmark stack variants, for step-time differences below the
run-to-run spread of ``bench_mhc.py`` (0.4–2 % between runs of the same code: RESULTS.md runs 26,
28, 29).

Every variant is built (and compiled) first and stays alive; then each of R rounds times every
variant for ``--iters`` steps, in an order rotated every round, so that slow drift (clocks,
temperature, the allocator) hits all variants alike. Reported per variant: the median step time over
rounds and its ratio to the first variant (the baseline): the median of the per-round ratios with a
95 % t-interval of their mean and a distribution-free 95 % interval of their median (robust to a few
slow rounds), and the ratio of the fastest rounds. A difference is resolved when two variants'
intervals do not overlap.

    PYTHONPATH=. python benchmarks/ab_stack.py --C 2048 --variants residual mhc_fused_linked \
        mhc_fused_linked_2mma --rounds 8 --out ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_mhc import time_cuda  # noqa: E402
from stack_variants import (add_stack_args, check_stack_args, check_variants, kernel_switches,  # noqa: E402
                            launch_settings, stack_inputs, stack_step, variant_settings)
from bench_io import claim_out, require_cuda, write_json  # noqa: E402
from kernel_bench import machine_probe  # noqa: E402
from ab_stats import interval, median_interval, summarize  # noqa: E402,F401  (tests use ab_stack.interval)


def make_step(kind: str, compiled: bool, c: int, n: int, n_blocks: int, x0, dout):
    """The variant's training step and its blocks (kept alive), built under its kernel switches."""
    with kernel_switches(kind):
        step, _, blocks = stack_step(kind.removesuffix("_lazy"), compiled, c, n, n_blocks, x0, dout)
    return step, blocks


def round_order(variants: list[str], r: int) -> list[str]:
    """The order of round r: the variants rotated by r, so each opens a round in turn."""
    k = r % len(variants)
    return variants[k:] + variants[:k]


def run_ab(variants: list[str], c: int, n: int, n_blocks: int, compiled: bool, x0, dout, rounds: int,
           iters: int, timer=time_cuda, probe=None, slot_warmup: int = 4) -> dict:
    """Per-round step times (ms) of every variant, rotated order; see the module docstring.
    ``slot_warmup`` untimed steps open each variant's slot in a round: the GPU runs power-capped, and
    run 95 at C = 4096 timed whichever variant came second in a round 2-3.6 ms slower (2.5-5 %) than
    when it came first, after the probe's idle pause. With 4 (run 100) the gap was within 1 ms and the
    interval of the ratio 5x narrower; records before run 100 used 1."""
    steps = {}
    for kind in variants:
        step, blocks = make_step(kind, compiled, c, n, n_blocks, x0, dout)
        t0 = time.time()
        with kernel_switches(kind):
            step()  # compile / autotune
        steps[kind] = (step, blocks, time.time() - t0)
    ms = {kind: [] for kind in variants}
    probes = []  # compute speed after every round: a clock slowdown shows here, not in the ratios alone
    for r in range(rounds):
        for kind in round_order(variants, r):
            with kernel_switches(kind):  # launch-time switches (e.g. _2mma) must hold while it runs
                ms[kind].append(timer(steps[kind][0], slot_warmup, iters))
        if probe is not None:
            probes.append(probe())
    return dict(C=c, blocks=n_blocks, compiled=compiled, rounds=rounds, iters=iters, slot_warmup=slot_warmup,
                ms=ms, probes=probes,
                first_step_s={k: v[2] for k, v in steps.items()}, summary=summarize(ms, variants[0]))


def position_effect(ms: dict[str, list[float]]) -> dict[str, tuple[float, float]]:
    """Per variant, (median ms in the rounds it ran first, median ms in the others), from run_ab's
    rotation (``round_order`` over ``ms``'s order). A gap between the two that
    all variants share is a bias of the slot, not of the variant; the rotation cancels it in the mean
    of the per-round ratios but widens their interval."""
    names = list(ms)
    out = {}
    for kind in names:
        first = [t for r, t in enumerate(ms[kind]) if round_order(names, r)[0] == kind]
        rest = [t for r, t in enumerate(ms[kind]) if round_order(names, r)[0] != kind]
        if first and rest:
            out[kind] = (statistics.median(first), statistics.median(rest))
    return out


def print_run(run: dict) -> None:
    tf = [p["gemm_tflops"] for p in run.get("probes", [])]
    probe = f"; bf16 GEMM {min(tf):.0f}–{max(tf):.0f} TFLOP/s over the rounds" if tf else ""
    print(f"\nC = {run['C']}, {run['blocks']} blocks, {'compiled' if run['compiled'] else 'eager'}, "
          f"{run['rounds']} rounds x {run['iters']} steps{probe}")
    for kind, s in run["summary"].items():
        lo, hi = s["ratio_ci95"]
        mlo, mhi = s["ratio_median_ci95"]
        print(f"  {kind:34} {s['ms_median']:8.2f} ms  x {s['ratio_median']:.4f}  (95 % t: {lo:.4f}–{hi:.4f};"
              f" median: {mlo:.4f}–{mhi:.4f})  min {s['ms_min']:.2f} ms, x {s['ratio_of_min']:.4f}")
    pos = position_effect(run["ms"])
    if pos:
        print(f"  slot bias ({run.get('slot_warmup', 1)} warm-up step(s) per slot), median ms first in a round / later: "
              + ", ".join(f"{k} {a:.2f} / {b:.2f}" for k, (a, b) in pos.items()))


def resummarize(path: str, base: str | None = None) -> None:
    """Print a saved --out record again with today's statistics (no GPU needed); ``base``: the
    variant the ratios are taken against (default: the run's first, its baseline)."""
    res = json.load(open(path))
    print(f"{path}: {res['device']}, commit {res['commit']}" + (f"; ratios against {base}" if base else ""))
    for run in res["runs"]:
        if base is not None and base not in run["ms"]:
            raise SystemExit(f"--base {base!r} is not a variant of {path}; it has: {', '.join(run['ms'])}")
        run["summary"] = summarize(run["ms"], base or next(iter(run["ms"])))
        print_run(run)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--summarize", metavar="JSON", help="print a saved --out record again and exit (no GPU)")
    ap.add_argument("--base", default=None, help="with --summarize: the variant to take ratios against (paired A/B)")
    ap.add_argument("--C", type=int, nargs="+", default=[2048])
    ap.add_argument("--variants", nargs="+", default=["residual", "mhc_fused_linked", "mhc_fused_linked_2mma"],
                    help="bench_mhc.py variant names; the first is the baseline of the ratios")
    add_stack_args(ap)
    ap.add_argument("--eager", action="store_true", help="time eager blocks (default: torch.compile)")
    ap.add_argument("--rounds", type=int, default=16, help="the median's 95 %% interval needs >= 9 (with 8 it is the range)")
    ap.add_argument("--iters", type=int, default=5, help="steps per variant per round (median taken)")
    ap.add_argument("--slot-warmup", type=int, default=4,
                    help="untimed steps before each variant's timed steps in every round, for the power-capped "
                         "clocks to settle (runs 95 / 100; records before run 100 used 1)")
    ap.add_argument("--set", nargs="*", default=(), metavar="NAME=VALUE",
                    help="set mhc_repro.kernels.launch constants for every variant (Python literals)")
    ap.add_argument("--variant-set", nargs="*", default=(), metavar="VARIANT:NAME=VALUE",
                    help="a launch constant for one variant only (e.g. another tile in an A/B)")
    ap.add_argument("--commit", default=os.environ.get("GIT_COMMIT", "unknown"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.summarize:
        return resummarize(args.summarize, args.base)
    settings, per_variant = launch_settings(args.set), variant_settings(args.variant_set)
    if args.rounds < 2:
        ap.error(f"--rounds {args.rounds} is too few; the interval needs at least 2")
    if args.slot_warmup < 0:
        ap.error(f"--slot-warmup {args.slot_warmup} is negative; allowed: 0 or more steps")
    if args.iters < 1:
        ap.error(f"--iters {args.iters}: need at least 1 timed step per variant per round")
    if len(set(args.variants)) != len(args.variants):
        ap.error(f"--variants {' '.join(args.variants)}: a variant is given twice; names must differ")
    check_stack_args(ap, args)
    check_variants(ap, args.variants, tagged=per_variant)
    claim_out(ap, args.out)
    require_cuda("ab_stack.py")
    # every variant's compiled blocks stay alive at once: room for all their graphs
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    torch._dynamo.config.accumulated_cache_size_limit = max(torch._dynamo.config.accumulated_cache_size_limit, 512)
    dev = torch.device("cuda")
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, commit=args.commit,
               argv=sys.argv, settings=settings, variant_settings=per_variant, runs=[])
    for c in args.C:
        nb, x0, dout = stack_inputs(c, args, dev)
        run = run_ab(args.variants, c, args.n, nb, not args.eager, x0, dout, args.rounds, args.iters,
                     probe=lambda: machine_probe(dev), slot_warmup=args.slot_warmup)
        res["runs"].append(run)
        print_run(run)
        if args.out:  # after every C, atomically
            write_json(args.out, res)


if __name__ == "__main__":
    main()
