"""Does train.compile keep every block variant compiled? The tiny preset, mHC, 4 steps with validation
and the Amax capture, under Dynamo's default recompile limit and under the limit train.compile sets
(raise_recompile_limit): how many variants of Block.forward Dynamo was asked for, and whether the limit was hit.

    PYTHONPATH=. python reports/training/recompile_budget_tiny.py > reports/training/recompile_budget_tiny.txt
"""

import os
import re
import subprocess
import sys
import tempfile

RUN = """
import sys
import mhc_repro.training.module as m
if sys.argv[1] == "default":
    m.raise_recompile_limit = lambda n_blocks: 8  # what train.compile did before: Dynamo's default
from mhc_repro.training import bench
bench.main(["--config", "experiments/tiny/base.yaml", "--variants", "mhc", "--steps", "4", "--warmup", "1",
            "--micro-batch", "2", "--seq-len", "64", "--compile", "--out", sys.argv[2]])
"""


def main() -> None:
    print(f"commit {subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()}, "
          f"this machine's CPU; command: {' '.join(sys.argv)}")
    for mode in ("default", "raised"):
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, TORCH_LOGS="recompiles")
            out = subprocess.run([sys.executable, "-c", RUN, mode, os.path.join(tmp, "b.json")], env=env,
                                 capture_output=True, text=True)
        log = out.stdout + out.stderr
        recompiles = len(re.findall(r"Recompiling function forward in .*transformer\.py", log))
        hit = "hit config.recompile_limit" in log
        print(f"limit {mode:8}: rc {out.returncode}, Block.forward variants asked for: {recompiles + 1}; "
              f"limit hit (the variants past it run eager): {hit}")


if __name__ == "__main__":
    main()
