"""Host cost of one fused mHC sub-layer (the linked pair with the fused norm, forward + backward), GPU
work left out: every Triton kernel of mhc_repro/kernels is replaced by a stub that only counts its
launches, so what is timed is the Python of the custom ops, their autograd and launchers, and the
torch ops they call. Also counted: the torch ops that would each be a GPU kernel (not views, not
allocations). Runs on the CPU; the H200 takes a few paths the CPU does not (the TMA dx pass and its
host-side descriptors), so this is a floor for the device's host work, not the figure itself.

    PYTHONPATH=. python benchmarks/host_overhead.py [--n 4] [--C 1280] [--tokens 1] [--layers 8] [--repeat 100] [--compile] [--cprofile K]

Why: on a bf16 stream mHC's 3B training steps are bimodal (reports/kernels/RESULTS.md, session 19), and
the spare time is GPU idle; this says how much host time each sub-layer asks for."""
from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import time

import torch

from mhc_repro.diagnostics.kernel_profile import KERNEL_MODULES

# aten ops that launch no GPU kernel of their own
NO_KERNEL = ("empty", "view", "as_strided", "_unsafe_view", "expand", "t", "transpose", "permute", "slice",
             "select", "unsqueeze", "squeeze", "alias", "detach", "reshape", "split", "unbind", "lift_fresh",
             "contiguous", "to", "_to_copy", "resolve_conj", "resolve_neg", "zeros_like", "empty_like",
             "empty_strided", "new_empty", "new_empty_strided", "result_type", "is_same_size")


class _Stub:
    """Stands in for a @triton.jit kernel: ``stub[grid](*args, **kw)`` counts and returns."""

    def __init__(self, name: str, counter: collections.Counter) -> None:
        self.name, self.counter = name, counter

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.counter[self.name] += 1
        return launch


def leaf_aten_ops(prof) -> collections.Counter:
    """aten ops with no aten op below them, less those in NO_KERNEL: each would be one GPU kernel
    (copies that do copy count: a contiguous() or to() that copies shows its aten::copy_ leaf)."""
    out = collections.Counter()
    for e in prof.events():
        if not e.name.startswith("aten::") or any(c.name.startswith("aten::") for c in e.cpu_children):
            continue
        if e.name[len("aten::"):] not in NO_KERNEL:
            out[e.name] += 1
    return out


@contextlib.contextmanager
def stubbed_kernels(counter: collections.Counter):
    """Every @triton.jit kernel of the kernel modules (and the CPU path's dφ GEMM) replaced by a counting
    stub, restored after."""
    from triton.runtime.jit import KernelInterface

    saved = []
    for mod in KERNEL_MODULES:
        m = importlib.import_module(f"mhc_repro.kernels.{mod}")
        for k, v in list(vars(m).items()):
            if isinstance(v, KernelInterface):
                saved.append((m, k, v))
                setattr(m, k, _Stub(k, counter))
    # the dφ GEMM of the CPU path (a torch matmul that would run for real here; on the H200 the TMA dx
    # pass forms dφ itself and this GEMM does not run): an allocation and a counted launch instead
    from mhc_repro.kernels import launch

    def dphi_gemm(x, dm, precision, dmp=None):
        counter["dphi_gemm"] += 1
        return torch.empty(x.shape[1], dm.shape[1], dtype=torch.float32)

    saved.append((launch, "_dphi_gemm", launch._dphi_gemm))
    launch._dphi_gemm = dphi_gemm
    try:
        yield
    finally:
        for m, k, v in saved:
            setattr(m, k, v)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--C", type=int, default=1280, help="stream width (the 3B preset's d_model)")
    ap.add_argument("--tokens", type=int, default=1, help="few: the torch ops between the stubs run for real on the CPU")
    ap.add_argument("--layers", type=int, default=8, help="sub-layers chained into one backward")
    ap.add_argument("--repeat", type=int, default=100)
    ap.add_argument("--compile", action="store_true", help="the chain under torch.compile (fullgraph)")
    ap.add_argument("--cprofile", type=int, default=0, metavar="K",
                    help="also print the K functions with the most cumulative host time over --repeat steps")
    args = ap.parse_args(argv)
    launches = collections.Counter()
    with stubbed_kernels(launches):
        return _measure(args, launches)


def _measure(args, launches: collections.Counter) -> dict:
    from mhc_repro.kernels import linked

    n, C, N, L = args.n, args.C, args.tokens, args.layers
    M = n * n + 2 * n
    x = torch.randn(N, n, C, dtype=torch.bfloat16, requires_grad=True)
    params = [((torch.randn(n * C, M) * 0.01).requires_grad_(), torch.rand(3, requires_grad=True),
               torch.randn(M, requires_grad=True), torch.ones(C, dtype=torch.bfloat16, requires_grad=True))
              for _ in range(L)]
    g = torch.randn(N, n, C, dtype=torch.bfloat16)

    def forward():  # L sub-layers in a chain, the branch left out (f = the branch input)
        h = x
        for phi, alpha, bias, w in params:
            b, hp, hr, xl = linked.mhc_pre_linked(h, phi, alpha, bias, n, norm_weight=w)
            h = linked.mhc_post_res_linked(xl, b, hp, hr)
        return h

    if args.compile:  # as the training recipe runs blocks: the custom ops called from Inductor's code
        forward = torch.compile(forward, fullgraph=True)

    def step():  # one backward call for the chain, as a training step has (its fixed cost shared)
        forward().backward(g)

    def median_us(fn) -> float:
        t = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
        return 1e6 * sorted(t)[len(t) // 2]

    for _ in range(5):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        launches.clear()
        step()
    ops, kernels = leaf_aten_ops(prof), dict(launches)
    us, fwd_us = median_us(step) / L, median_us(forward) / L
    kernels = {k: v / L for k, v in kernels.items()}
    ops = {k: v / L for k, v in ops.items()}
    n_launch = sum(kernels.values())
    res = dict(n=n, C=C, tokens=N, layers=L, compile=args.compile, host_us_per_sublayer=us, host_us_forward=fwd_us,
               triton_launches=n_launch, kernels=kernels, torch_ops=sum(ops.values()), torch_op_names=ops,
               torch=torch.__version__)
    if args.cprofile:  # where the host time goes: torch's custom-op dispatch against our launchers
        import cProfile
        import pstats

        pr = cProfile.Profile()
        pr.runcall(lambda: [step() for _ in range(args.repeat)])
        pstats.Stats(pr).sort_stats("cumtime").print_stats(args.cprofile)
    print(f"per sub-layer of a chain of {L}{' (compiled)' if args.compile else ''}, forward + backward (linked pair, fused norm, bf16 stream, "
          f"n = {n}, C = {C}, {N} token(s)):")
    print(f"  host time {us:.0f} µs, of which forward {fwd_us:.0f} µs (medians of {args.repeat}; GPU kernels stubbed)")
    print(f"  Triton launches {n_launch:g}: {kernels}")
    print(f"  torch ops that launch GPU work {sum(ops.values()):g}: {ops}")
    return res


if __name__ == "__main__":
    main()
