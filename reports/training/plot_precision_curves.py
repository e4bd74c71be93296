"""Per-step train loss of `mhc_repro.training.bench --data bigram` reports, one line per (report, variant):
e.g. the same runs under "16-mixed" (fp16 + GradScaler) and "bf16-mixed".

    python3 reports/training/plot_precision_curves.py OUT.png REPORT.json [REPORT.json ...]

Prints, per line, the mean loss over the last 10 steps and the GradScaler's scales; writes OUT.png."""

from __future__ import annotations

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        raise SystemExit(__doc__.splitlines()[-1].strip())
    out, reports = argv[0], argv[1:]
    fig, ax = plt.subplots(figsize=(7, 4))
    for path in reports:
        for r in json.load(open(path))["results"]:
            if r.get("error"):
                print(f"{path} {r['variant']}: error {r['error']}")
                continue
            losses = r["train_losses"]
            label = f"{r['variant']} {r['precision']}"
            ax.plot(range(1, len(losses) + 1), losses, label=label, ls="-" if r["precision"] == "16-mixed" else "--")
            tail = losses[-10:]
            print(f"{label:22} steps {len(losses):4d}  last-10 mean {sum(tail) / len(tail):.3f}  "
                  f"grad scales {sorted(set(r['grad_scales'])) or '-'}")
    ax.set(xlabel="optimizer step", ylabel="train loss", title="synthetic bigram tokens, H200")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
