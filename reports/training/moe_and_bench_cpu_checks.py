"""The CPU figures session 18 quotes for the MoE combine, MoEConfig.shuffle and bench --final-pass.

1. Rounding of a bf16 token's k gated expert outputs: the share of elements equal to the fp64 sum
   rounded once to bf16, for the old bf16 index_add combine and for the fp32 one (moe_shuffle).
2. The tiny-moe bench (compiled, mHC and residual) with shuffle "index_add" and "gather": final losses.
3. The same bench with and without the final validation / Amax pass: seconds per process.

    PYTHONPATH=. python reports/training/moe_and_bench_cpu_checks.py > reports/training/moe_and_bench_cpu_checks.txt
"""

import json
import platform
import subprocess
import sys
import tempfile

import torch

from mhc_repro.model import moe_shuffle
from mhc_repro.tracking.runinfo import git_commit


def combine_rounding(n_tokens: int = 4096, k: int = 6, c: int = 64) -> dict[str, float]:
    g = torch.Generator().manual_seed(0)
    out = (torch.randn(n_tokens * k, c, generator=g) * 3).to(torch.bfloat16)  # expert outputs, expert order
    gates = torch.rand(n_tokens, k, generator=g)
    order = torch.randperm(n_tokens * k, generator=g)
    exact = torch.zeros(n_tokens, c, dtype=torch.float64).index_add_(
        0, order // k, out.double() * gates.flatten()[order][:, None].double()).to(torch.bfloat16)
    old = torch.zeros(n_tokens, c, dtype=torch.bfloat16).index_add_(  # the combine up to 7863eed
        0, order // k, (out * gates.flatten()[order][:, None].to(torch.bfloat16)).to(torch.bfloat16))
    new = moe_shuffle.from_experts(out, order, None, gates, k, torch.bfloat16, "index_add")
    return {name: (y == exact).float().mean().item() for name, y in (("bf16 index_add (old)", old), ("fp32 (now)", new))}


def bench(*extra: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/b.json"
        subprocess.run([sys.executable, "-m", "mhc_repro.training.bench", "--config", "experiments/tiny-moe/base.yaml",
                        "--variants", "mhc", "residual", "--steps", "4", "--warmup", "1", "--micro-batch", "2",
                        "--seq-len", "64", "--compile", "--diag-dir", f"{tmp}/diag", "--out", out, *extra],
                       check=True, capture_output=True)
        return json.load(open(out))["results"]


def main() -> None:
    print(f"# commit {git_commit()}; {platform.node()}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, no GPU")
    print("\n1. share of elements equal to the fp64 sum rounded once to bf16 (4096 tokens, k = 6, C = 64)")
    for name, share in combine_rounding().items():
        print(f"   {name:>22}: {share:.3f}")
    print("\n2. tiny-moe bench, compiled, final train loss by MoEConfig.shuffle")
    for shuffle in ("index_add", "gather"):
        rows = bench("--set", f"model.moe.shuffle={shuffle}")
        print(f"   {shuffle:>9}: " + ", ".join(f"{r['variant']} {r['final_train_loss']:.6f}" for r in rows))
    print("\n3. tiny-moe bench, compiled, seconds per variant with and without the final pass (cache warm)")
    for final in ("true", "false"):
        rows = bench("--final-pass", final)
        print(f"   --final-pass {final:>5}: " + ", ".join(
            f"{r['variant']} fit {r['fit_wall_s']:.1f} s (first step {r['first_step_s']:.1f} s)" for r in rows))


if __name__ == "__main__":
    main()
