"""`mhc-repro params`: total / active parameter counts of a preset (meta device, no memory)."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    p = subparsers.add_parser("params", help="count total / active parameters of a model preset",
                              description=__doc__)
    p.add_argument("--preset", required=True, help="preset name (tiny, tiny-moe, small, 3b, 9b, 27b, 3b-1t)")
    p.add_argument("--variant", default="residual", help="residual variant: residual, hc, mhc (default residual)")
    p.add_argument("--n", type=int, default=None, help="streams for hc/mhc (default 4)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def _human(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.3f}{unit}"
    return str(n)


def run(args: argparse.Namespace) -> int:
    from mhc_repro.model.params import count_params
    from mhc_repro.presets import get_preset, with_variant

    cfg = get_preset(args.preset)
    overrides = {} if args.n is None else {"n": args.n}
    if args.variant != "residual" or overrides:
        cfg = with_variant(cfg, args.variant, **overrides)
    counts = count_params(cfg)
    if args.json:
        print(json.dumps({"preset": args.preset, "variant": args.variant,
                          "n_streams": cfg.residual.num_streams, **counts}, indent=2))
        return 0
    print(f"preset {args.preset}  variant {args.variant}  (n = {cfg.residual.num_streams})")
    print(f"  {'total':<12}{counts['total']:>16,d}  {_human(counts['total'])}")
    print(f"  {'active':<12}{counts['active']:>16,d}  {_human(counts['active'])}")
    for key, value in counts.items():
        if key not in ("total", "active"):
            print(f"    {key:<12}{value:>14,d}  {_human(value)}")
    return 0
