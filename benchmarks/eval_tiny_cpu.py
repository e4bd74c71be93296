"""Time `mhc-repro eval` on the bundled fixtures (all eight tasks, full generation budgets) on CPU.

    python benchmarks/eval_tiny_cpu.py [--run RUN_DIR] [--variant mhc] [--out record.json]

Without --run it scores a random-weight tiny run directory (preset ``tiny``, DESIGN.md checkpoint
format) with a byte-level BPE trained on the fixtures; a random model seldom emits a stop string, so
generation runs to its full budget: an upper bound for a trained tiny model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def random_run_dir(root: Path, variant: str) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from mhc_repro.model.transformer import LM
    from mhc_repro.presets import get_preset, with_variant

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [p.read_text() for p in sorted((ROOT / "eval" / "fixtures").rglob("*.jsonl"))]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=8192, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    cfg = get_preset("tiny")
    if variant != "residual":
        cfg = with_variant(cfg, variant)
    torch.manual_seed(0)
    model = LM(cfg)
    run_dir = root / "tiny" / f"{variant}-random"
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"config": {"model": cfg.to_dict()}}}, run_dir / "checkpoints" / "step0000000.ckpt")
    tok.save(str(run_dir / "tokenizer.json"))
    return run_dir


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, help="a real run directory (default: random-weight tiny run)")
    p.add_argument("--variant", default="mhc")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    from mhc_repro.cli import main as cli_main

    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or random_run_dir(Path(tmp), args.variant)
        scores = Path(tmp) / "scores.json"
        t0 = time.perf_counter()
        rc = cli_main(["eval", "--run", str(run), "--data-dir", str(ROOT / "eval" / "fixtures"), "--device", "cpu",
                       "--batch-size", str(args.batch_size), "--no-mlflow", "--output", str(scores)]
                      + (["--threads", str(args.threads)] if args.threads else []))
        wall = time.perf_counter() - t0
        summary = json.loads(scores.read_text())[0]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    record = {"benchmark": "eval_tiny_cpu", "commit": commit, "run": str(args.run or f"random tiny {args.variant}"),
              "command": " ".join([sys.executable.split("/")[-1]] + sys.argv), "wall_s": round(wall, 1),
              "eval_s_incl_loading": round(summary["seconds"], 1), "scores": summary["scores"],
              "shots": summary["shots"], "coverage": summary["coverage"], "cpu": platform.processor() or platform.machine(),
              "cores": os.cpu_count(), "torch_threads": __import__("torch").get_num_threads(),
              "load_avg_after": os.getloadavg(), "rc": rc}
    print(json.dumps(record, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
