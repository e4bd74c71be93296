"""Host cost of one fused mHC sub-layer (forward + backward), with the GPU kernels stubbed out.

At small steps (the 3B preset trains 8k tokens per step at C = 1280) the fused kernels take tens of µs
each on an H200, so the host can set the pace: the Python launchers (tile choice, tensor descriptors,
buffers), the custom ops' dispatch and autograd. This runs the linked pair with the branch's norm
fused in, exactly as the model calls it, on CPU tensors, with every public @triton.jit kernel of
mhc_repro/kernels replaced by a stub that only counts its launch. What it times is therefore the
project's own host work per sub-layer, not Triton's launcher (which each counted launch adds on a
GPU) and not the kernels. Small token counts keep the CPU's share of the torch ops around the kernels
(zero fills, partial sums) near what their launches cost.

    PYTHONPATH=. python benchmarks/host_overhead.py --C 1280 --tokens 256 --iters 200
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are decorated: the interpreter's code paths

import torch  # noqa: E402


class InterpretedFunction:
    """A stub kernel. Named like Triton's interpreter wrapper so that ``launch._interpreted()`` (which
    checks that name) keeps choosing the same launch paths as under the interpreter (the TMA dx pass)."""

    def __init__(self, name: str, counts: collections.Counter) -> None:
        self.name, self.counts = name, counts

    def __getitem__(self, grid):
        return self._launch

    def _launch(self, *args, **kwargs) -> None:
        self.counts[self.name] += 1


def stub_kernels() -> collections.Counter:
    """Replaces every public kernel of the kernel modules by a counting stub; returns the counter."""
    import importlib

    from mhc_repro.diagnostics.kernel_profile import KERNEL_MODULES, MHC_KERNELS

    counts: collections.Counter = collections.Counter()
    for mod in KERNEL_MODULES:
        m = importlib.import_module(f"mhc_repro.kernels.{mod}")
        for name in MHC_KERNELS:
            if name in vars(m):
                setattr(m, name, InterpretedFunction(name, counts))
    return counts


def sublayer(n: int, C: int, N: int, compiled: bool = False, dtype=torch.bfloat16):
    """A function running one sub-layer's forward + backward through the fused linked pair (identity
    branch), eager or under torch.compile (as the model's blocks run)."""
    from mhc_repro.kernels import linked

    M = n * n + 2 * n
    x = torch.randn(N, n, C, dtype=dtype, requires_grad=True)
    phi = (torch.randn(n * C, M) * 0.01).requires_grad_()
    alpha, bias = torch.rand(3, requires_grad=True), torch.randn(M, requires_grad=True)
    w = torch.ones(C, dtype=dtype, requires_grad=True)
    g = torch.randn(N, n, C, dtype=dtype)

    def forward(x, phi, alpha, bias, w):
        branch_in, h_post, h_res, x_link = linked.mhc_pre_linked(x, phi, alpha, bias, n, norm_weight=w)
        return linked.mhc_post_res_linked(x_link, branch_in, h_post, h_res)

    fwd = torch.compile(forward, dynamic=False) if compiled else forward

    def step() -> None:
        fwd(x, phi, alpha, bias, w).backward(g)

    return step


def measure(step, iters: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append(1e6 * (time.perf_counter() - t0))
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--C", type=int, nargs="+", default=[1280, 2048])
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=256, help="few: the CPU's own compute stays small")
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    args = ap.parse_args(argv)
    if args.tokens < 1 or args.iters < 1:
        ap.error(f"--tokens {args.tokens} / --iters {args.iters} are invalid; allowed: positive integers")
    if os.environ.get("TRITON_INTERPRET") != "1":
        ap.error("TRITON_INTERPRET must be 1 before torch / triton are imported (it is set by default)")
    counts = stub_kernels()
    print(f"torch {torch.__version__}, {args.tokens} tokens, n = {args.n}; the kernels stubbed (launches counted)")
    print(f"{'C':>6} {'mode':>9} {'median µs':>10} {'p10':>8} {'p90':>8}  launches per sub-layer (fwd + bwd)")
    for c, mode in ((c, m) for c in args.C for m in args.modes):
        step = sublayer(args.n, c, args.tokens, compiled=mode == "compiled")
        step()
        counts.clear()
        step()
        per_step = dict(counts)
        t = sorted(measure(step, args.iters))
        q = statistics.quantiles(t, n=10)
        print(f"{c:>6} {mode:>9} {statistics.median(t):>10.1f} {q[0]:>8.1f} {q[-1]:>8.1f}  "
              f"{sum(per_step.values())}: " + ", ".join(f"{k} {v}" for k, v in sorted(per_step.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
