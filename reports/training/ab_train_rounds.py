"""Every round of ab_train.py runs, one line per round: each arm's median step (ms) and its ratio to a
base arm of the same round. What per-round figures the READMEs quote come from (session 19: mHC's
bimodal bf16-stream steps).

    python reports/training/ab_train_rounds.py BASE FILE.json [FILE.json ...]

A partial file (a run stopped by its timeout) counts its complete rounds only; an arm missing from a
round (or BASE missing) prints "-". Where the rows keep every step (``step_times_s``, since session 19)
each arm also shows the fastest and slowest timed step after the warm-up: a slow process has all its
steps slow, a process with slow steps a wide range. Last, every arm's ratio pooled over the rounds of
all the files (ab_stats: median, 95 % t of the mean, distribution-free 95 % of the median): calls that
each hold two rounds add up to one A/B (session 23: runs 98, 102, 103)."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks"))
from ab_stats import interval, median_interval  # noqa: E402


def rounds(path: str) -> tuple[list[str], list[dict[str, float]]]:
    """(arm names, [{arm: ms} per round]) of one ab_train.py output."""
    run = json.loads(open(path).read())
    arms = list(run["ms"])
    per_round = [{a: 1e3 * r[a]["step_time_s_median"] for a in r if r[a].get("step_time_s_median")}
                 for r in run["rows"]]
    return arms, per_round


def step_range(row: dict) -> str:
    """' [steps a–b ms]' over the timed steps after the warm-up, or '' where the row has no steps."""
    times = row.get("step_times_s")
    if not times:
        return ""
    after = times[(row.get("warmup_steps_excluded") or 0) + 1:] or times
    return f" [steps {1e3 * min(after):.1f}–{1e3 * max(after):.1f} ms]"


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.split("\n\n")[1].strip())
        return 2
    base, files = argv[0], argv[1:]
    pooled: dict[str, list[float]] = {}
    for path in files:
        arms, per_round = rounds(path)
        rows = json.loads(open(path).read())["rows"]
        print(f"== {path}")
        for i, (r, row) in enumerate(zip(per_round, rows), 1):
            cells = []
            for a in arms:
                ms = r.get(a)
                ratio = f"{ms / r[base]:.3f}x" if ms and r.get(base) else "-"
                cells.append(f"{a} {ms:.1f} ms ({ratio}){step_range(row[a])}" if ms else f"{a} -")
            print(f"round {i}: " + "; ".join(cells))
            for a in arms:
                if a != base and r.get(a) and r.get(base):
                    pooled.setdefault(a, []).append(r[a] / r[base])
    for a, ratios in pooled.items():
        med, lo, hi = interval(ratios)
        mlo, mhi = median_interval(ratios)
        print(f"pooled {a} / {base}: {len(ratios)} rounds, median {med:.3f}x (95 % t of the mean "
              f"{lo:.3f}–{hi:.3f}; of the median {mlo:.3f}–{mhi:.3f}); rounds {min(ratios):.3f}–{max(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
