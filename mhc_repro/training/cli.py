"""``mhc-repro train``: one run, or a study (several variants, sequentially, one MLflow experiment).

    mhc-repro train --config experiments/tiny/mhc.yaml
    mhc-repro train --config experiments/tiny/base.yaml --variants residual hc mhc     # a study
    mhc-repro train --config experiments/3b/base.yaml --variant hc --set train.lr=1e-3 --set data.batch_size=4

Rerunning the same command resumes unfinished runs from their newest checkpoint; in a study, finished
runs of the same config are skipped, so a killed ``make reproduce`` continues where it stopped; a run
directory holding a run of another config (finished or not) is an error, found before any training.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train an LM (one variant, or a study of several)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", default=[], metavar="YAML",
                   help="config file (repeatable; later files override earlier ones)")
    p.add_argument("--variant", choices=("residual", "hc", "mhc"), help="residual variant (= --set train.variant=...)")
    p.add_argument("--variants", nargs="+", choices=("residual", "hc", "mhc"), metavar="VARIANT",
                   help="study mode: train these variants one after another into one experiment")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-3 (repeatable)")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue an unfinished run directory")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from mhc_repro.training.compose import build_config, dump_config
    from mhc_repro.training.module import NonFiniteLossError
    from mhc_repro.training.run import RunFinishedError, check_run_dir, is_global_rank_zero, train

    if args.variant and args.variants:
        raise ValueError("--variant and --variants are exclusive; use one of them")
    variants = args.variants or [args.variant]
    # Resolve (and so validate) every config before any training starts.
    cfgs = [build_config(args.config, args.overrides, variant=v) for v in variants]
    if args.print_config:
        # one YAML document per run ("---" between them), so a study's output parses with safe_load_all
        print("\n---\n".join(dump_config(cfg) for cfg in cfgs))
        return 0
    # Check every run directory before any training: a study must not train two variants and then
    # stop at the third one's conflicting run directory.
    for cfg in cfgs:
        try:
            check_run_dir(cfg, resume=not args.no_resume)
        except RunFinishedError:
            if not args.variants:
                raise
    summaries = []
    for cfg in cfgs:
        print(f"== train {cfg.experiment}/{cfg.run_name} (preset {cfg.train.preset}, variant {cfg.train.variant}, "
              f"{cfg.train.max_steps} steps)", file=sys.stderr, flush=True)
        try:
            summaries.append(train(cfg, resume=not args.no_resume))
        except RunFinishedError as err:
            if args.variants:  # study: skip what is already done
                print(f"   skipped: {err}", file=sys.stderr)
                continue
            raise
        except NonFiniteLossError as err:
            print(f"mhc-repro train: stopped: {err}", file=sys.stderr)
            return 3
    # Lightning's launcher reruns this command on ranks > 0: only global rank 0 reports
    for s in summaries if is_global_rank_zero() else []:
        print(json.dumps({k: s[k] for k in ("experiment", "run_name", "steps", "final_train_loss",
                                             "final_val_loss", "train_seconds", "run_dir")}))
    return 0
