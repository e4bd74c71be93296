"""Interleaved A/B of the real training step (``mhc_repro.training.bench``): one process per arm and
round, the arms' order rotated every round, ratios taken per round against the first arm.

The 3B step's residual baseline drifts 200–208 ms between processes (reports/kernels/RESULTS.md,
runs 72–76), more than the differences one asks about (a bf16 stream, a kernel tile). Sequential
runs cannot separate those; paired rounds can (statistics: ``ab_stats``). Each process is timed by
the bench itself (median step after its warm-up); Inductor's cache makes every process after an
arm's first start in seconds. The bench's final validation and Amax pass are left out (their
eval-mode graphs compile anew in every process: 9 of 25 s of the mHC tiny-moe process on the CPU,
reports/training/moe_and_bench_cpu_checks.txt).

    PYTHONPATH=. python benchmarks/ab_train.py --config experiments/3b/base.yaml --compile --rounds 3 \
        --arm residual residual --arm mhc mhc \
        --arm residual_bf16 residual model.residual.stream_dtype=bfloat16 \
        --arm mhc_bf16 mhc model.residual.stream_dtype=bfloat16 --out ab_train.json

``--arm NAME VARIANT [KEY=VALUE ...]``: the variant and its ``--set`` overrides; ``env:KEY=VALUE`` sets an
environment variable of the arm's processes instead (``env:MHC_KERNEL_OPS=custom_op``). ``--out`` is written
once, when every round is done (``<out>.partial`` after each round meanwhile), so a failed or
interrupted run leaves an earlier record of the same name as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab_stats import summarize  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench_command(args, variant: str, sets: list[str], out: str) -> list[str]:
    envs = [s[len("env:"):] for s in sets if s.startswith("env:")]  # run through env(1)
    sets = [s for s in sets if not s.startswith("env:")]
    cmd = (["env", *envs] if envs else []) + [
           sys.executable, "-m", "mhc_repro.training.bench", "--config", args.config, "--variants", variant,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--micro-batch", str(args.micro_batch),
           "--seq-len", str(args.seq_len), "--out", out, "--diag-dir", os.path.join(os.path.dirname(out), "diag"),
           "--final-pass", "false"]  # no validation / Amax after the steps (--bench-args "--final-pass true")
    cmd += ["--compile"] if args.compile else []
    for s in sets:
        cmd += ["--set", s]
    return cmd + shlex.split(args.bench_args)


def run_process(cmd: list[str], timeout: float) -> dict:
    """One bench process; its result row, or {"error": ...}. On timeout the whole process group is
    killed with SIGKILL (Lightning catches SIGTERM and can outlive a plain terminate)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    out = cmd[cmd.index("--out") + 1]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0 or not os.path.exists(out):
        return {"error": f"exit status {proc.returncode}", "log_tail": log[-2000:]}
    rec = json.load(open(out))
    row = {**rec["results"][0], "device": rec.get("device"), "torch": rec.get("torch")}
    return row if row.get("error") is None else {"error": row["error"]}


def run_rounds(arms: dict[str, tuple[str, list[str]]], rounds: int, make_cmd, runner=None,
               timeout: float = 600, partial=None) -> dict:
    """Every arm once per round, in an order rotated by one each round. ``ms[name]`` holds the
    rounds in which every arm ran (a failed process drops its round for all arms: ratios stay
    paired); ``failed`` lists what failed. ``runner(cmd, timeout)``: run_process unless given."""
    runner = runner or run_process
    names = list(arms)
    ms, rows, failed, orders = {n: [] for n in names}, [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            orders.append(order)
            got = {}
            for name in order:
                variant, sets = arms[name]
                t0 = time.perf_counter()
                row = runner(make_cmd(variant, sets, os.path.join(tmp, f"r{r}_{name}.json")), timeout)
                dt = time.perf_counter() - t0
                if row.get("error") is not None:
                    failed.append(dict(round=r, arm=name, **row))
                    print(f"round {r + 1}/{rounds} {name:>16}: FAILED ({row['error']}) after {dt:.0f} s", flush=True)
                    continue
                got[name] = row
                print(f"round {r + 1}/{rounds} {name:>16}: {1e3 * row['step_time_s_median']:8.2f} ms/step "
                      f"({dt:.0f} s)", flush=True)
            rows.append({n: {k: got[n].get(k) for k in ("step_time_s_median", "first_step_s", "peak_mem_allocated_gib",
                                                      "final_train_loss", "final_pass", "device",
                                                      "step_times_s", "warmup_steps_excluded")} for n in got})
            if len(got) == len(names):
                for n in names:
                    ms[n].append(1e3 * got[n]["step_time_s_median"])
            if partial:
                partial(dict(ms=ms, rows=rows, failed=failed, orders=orders))
    return dict(ms=ms, rows=rows, failed=failed, orders=orders)


def print_summary(res: dict) -> None:
    print(f"\n{res['complete_rounds']} complete rounds; ratios per round against {res['base']}")
    for name, s in res["summary"].items():
        lo, hi = s["ratio_ci95"]
        print(f"  {name:>16} {s['ms_median']:8.2f} ms  x {s['ratio_median']:.4f}  (95 % t: {lo:.4f}–{hi:.4f})"
              f"  min {s['ms_min']:.2f} ms, x {s['ratio_of_min']:.4f}")


def parse_arms(ap: argparse.ArgumentParser, specs: list[list[str]]) -> dict[str, tuple[str, list[str]]]:
    arms = {}
    for spec in specs:
        if len(spec) < 2:
            ap.error(f"--arm {' '.join(spec)!r} is incomplete; allowed: --arm NAME VARIANT [KEY=VALUE ...]")
        name, variant, sets = spec[0], spec[1], spec[2:]
        bad = [s for s in sets if "=" not in s]
        if bad:
            ap.error(f"--arm {name}: {bad[0]!r} is not a KEY=VALUE override")
        if name in arms:
            ap.error(f"--arm {name!r} is given twice; arm names must differ")
        arms[name] = (variant, sets)
    if len(arms) < 2:
        ap.error(f"{len(arms)} arm(s) given; an A/B needs at least 2 (--arm NAME VARIANT [KEY=VALUE ...])")
    return arms


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--config", required=True)
    ap.add_argument("--arm", nargs="+", action="append", default=[], metavar="SPEC",
                    help="an arm, as NAME VARIANT [KEY=VALUE ...]: its name, the training variant and its --set "
                         "overrides; the first arm is the baseline")
    ap.add_argument("--rounds", type=int, default=3, help="every arm once per round, order rotated")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--bench-args", default="", help="more arguments for every bench process (one string)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per process")
    ap.add_argument("--commit", default=os.environ.get("GIT_COMMIT", "unknown"))
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    arms = parse_arms(ap, args.arm)
    if args.rounds < 2:
        ap.error(f"--rounds {args.rounds} is too few; the interval needs at least 2")
    head = dict(commit=args.commit, argv=sys.argv if argv is None else argv, config=args.config,
                arms={n: dict(variant=v, sets=s) for n, (v, s) in arms.items()})

    def save(path: str, body: dict) -> None:
        tmp = path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({**head, **body}, fh, indent=1)
        os.replace(tmp, path)

    res = run_rounds(arms, args.rounds, lambda v, s, out: bench_command(args, v, s, out), timeout=args.timeout,
                     partial=lambda body: save(args.out + ".partial", body))
    base = next(iter(arms))
    res["base"], res["complete_rounds"] = base, len(res["ms"][base])
    if res["complete_rounds"] < 2:
        print(f"only {res['complete_rounds']} complete round(s): no ratios; see {args.out}.partial", file=sys.stderr)
        return 1
    res["summary"] = summarize(res["ms"], base)
    save(args.out, res)
    os.remove(args.out + ".partial")
    print_summary(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
