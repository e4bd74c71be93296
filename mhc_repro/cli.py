"""`mhc-repro` console command. Each subcommand lives with the code it drives and registers itself
through a ``register(subparsers)`` function; imports are lazy so `mhc-repro params` stays light."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module providing register(subparsers) and a handler set via set_defaults(func=...)
SUBCOMMANDS = {
    "params": "mhc_repro.model.cli",
    "train": "mhc_repro.training.cli",
    "eval": "mhc_repro.evaluation.cli",
    "report": "mhc_repro.reporting.cli",
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mhc-repro", description=__doc__.split("\n")[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    wanted = [a for a in argv if a in SUBCOMMANDS][:1] or list(SUBCOMMANDS)
    for name in SUBCOMMANDS:
        if name in wanted:
            importlib.import_module(SUBCOMMANDS[name]).register(subparsers)
        else:  # registered lazily: only the chosen subcommand's module is imported
            subparsers.add_parser(name, help=f"see `mhc-repro {name} --help`")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, PermissionError) as err:
        # Bad input: one clear line, no traceback (set MHC_REPRO_DEBUG=1 for the traceback).
        import os

        if os.environ.get("MHC_REPRO_DEBUG"):
            raise
        print(f"mhc-repro {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
