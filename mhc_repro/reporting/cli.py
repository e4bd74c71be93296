"""`mhc-repro report`: regenerate reports/<experiment>/ from the MLflow store."""

from __future__ import annotations

import argparse
import os


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="tables, figures and claims ledger of an MLflow experiment",
        description="Regenerate reports/<experiment>/ (Table 4, Table 1, figures, claims ledger, README) "
                    "from the MLflow runs of one experiment. Files are replaced atomically.")
    p.add_argument("--experiment", required=True, help="MLflow experiment (study) name, e.g. tiny")
    p.add_argument("--out", default="reports", help="parent folder of the report (default: reports)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the repo's sqlite store)")
    p.add_argument("--smooth", type=int, default=0,
                   help="curve smoothing window in logged points: 0 = auto (~5%%), 1 = none (default 0)")
    p.add_argument("--kernels-dir", default=None,
                   help="kernel benchmark records for the overhead claim (default: <out>/kernels if present, else the checkout's reports/kernels)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from mhc_repro.reporting.report import generate_report

    target = generate_report(args.experiment, args.out, args.tracking_uri, args.smooth, args.kernels_dir)
    print(f"report written to {target}/README.md")
    return 0
