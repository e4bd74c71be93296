"""Registers, shared memory and spills of every fused kernel as the launchers would launch it on an
H200 (sm_90), compiled ahead of time on a machine without a GPU.

Runs the per-kernel table of ``kernel_bench.bench_kernels`` on CPU tensors with every Triton kernel of
``coef_kernels`` / ``stream_kernels`` replaced by a recorder: each launch's arguments go through
Triton's own binder (the same specialization, e.g. 16-byte alignment, as a launch on the device), are
compiled for ``cuda:90`` and the cubin's resource usage is read with ``cuobjdump -res-usage``. Blocks
per SM are the limits of registers (64 K per SM), shared memory (227 KB) and warps (64) — occupancy,
which Nsight Compute named the limiter of the backward stream kernels (RESULTS.md run 20) and of the
forward projection (run 27). Match the device's Triton version (3.6.0) for the device's numbers: at
commit b1af59e this tool and ncu on the H200 agree on proj_fwd (168 registers, 72 KB shared memory).
Uses Triton internals (``create_function_from_signature``, ``JITFunction._pack_args``).

    PYTHONPATH=.:/path/to/triton-3.6 python benchmarks/kernel_resources.py --C 2048 [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

REGS_PER_SM, SMEM_PER_SM, WARPS_PER_SM, BLOCKS_PER_SM = 65536, 232448, 64, 32


class Recorder:
    """Stands in for a JIT kernel: ``kernel[grid](*args, **kw)`` records the launch instead."""

    def __init__(self, fn, launches: list):
        self.fn, self.launches = fn, launches

    def __getitem__(self, grid):
        return lambda *args, **kw: self.launches.append((self.fn, grid, args, kw))


def compile_for_sm90(fn, args, kw):
    """Compile one recorded launch for sm_90 as Triton's launcher would; returns the CompiledKernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    kw = dict(kw, debug=False, instrumentation_mode="")
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, spec, options = binder(*args, **kw)
    options, signature, constexprs, attrs = fn._pack_args(backend, kw, bound, spec, options)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)


def resources(kernel) -> dict:
    """Registers per thread, spill stack, shared memory of a compiled kernel; blocks per SM."""
    import triton

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as fh:
            fh.write(kernel.asm["cubin"])
        tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        out = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    use = dict(re.findall(r"(REG|STACK):(\d+)", out))
    regs, stack = int(use["REG"]), int(use["STACK"])
    warps, smem = kernel.metadata.num_warps, kernel.metadata.shared
    by_regs = REGS_PER_SM // (regs * 32 * warps)
    by_smem = SMEM_PER_SM // (smem + 1024) if smem else BLOCKS_PER_SM
    blocks = min(by_regs, by_smem, WARPS_PER_SM // warps, BLOCKS_PER_SM)
    limit = "registers" if blocks == by_regs else "shared memory" if blocks == by_smem else "warps"
    return dict(regs=regs, spill_stack=stack, smem_kb=smem / 1024, warps=warps, blocks_per_sm=blocks,
                occupancy=blocks * warps / WARPS_PER_SM, limit=limit)


def stream_tile_buffers(kernel, bn: int, bk: int) -> int:
    """How many shared-memory copies of one [bn, bk] bf16 stream tile the compiled kernel allocates
    (its TTGIR's local allocations): 1 = the loads are not multi-buffered by the loop pipeliner."""
    shapes = re.findall(rf"!ttg\.memdesc<(?:(\d+)x)?{bn}x{bk}xbf16", kernel.asm["ttgir"])
    return max((int(d or 1) for d in shapes), default=0)


def code_lines(ptx: str) -> str:
    """The PTX without what does not change the code: source locations, comments, debug-scope labels
    ($L__tmpN, they follow how functions were inlined) and the DWARF sections."""
    ptx = ptx.split(".section\t.debug")[0].split(".section .debug")[0]
    keep = [ln for ln in ptx.splitlines()
            if not re.match(r"\s*(\.loc|\.file|//|\$L__tmp\d+:)", ln)]
    return "\n".join(keep) + "\n"


def record_kernel_table(c: int, n: int, N: int, precision: str) -> list[tuple[str, list]]:
    """(kernel table row, its recorded launches) for every row of kernel_bench.bench_kernels."""
    import triton.testing

    from mhc_repro.kernels import coef_kernels, launch, norm_kernels, stream_kernels

    launches: list = []
    saved = {}
    n_sm, tma = launch._n_sm, launch._PROJ_BWD_TMA
    launch._n_sm = lambda device: 132  # the H200's SM count: grids and token splits as on the device
    # The table's dx rows: the pointer dx pass (what the device runs with _PROJ_BWD_TMA = None or off
    # sm_90); the TMA one needs CUDA tensors for its launcher's checks: record_dx_tma below.
    launch._PROJ_BWD_TMA = None
    for mod in (coef_kernels, stream_kernels, norm_kernels):
        for name, obj in vars(mod).items():
            if type(obj).__name__ == "JITFunction" and hasattr(obj, "params") and not name.startswith("_"):
                saved[(mod, name)] = obj
                setattr(mod, name, Recorder(obj, launches))
    per_call: list[list] = []

    def one_call(fn, **_):
        start = len(launches)
        fn()
        per_call.append(launches[start:])
        return 1.0

    bench, graph, comp = triton.testing.do_bench, triton.testing.do_bench_cudagraph, torch.compile
    # one recorded call per table row: the device-time replay (kernel_bench.gpu_time) is not run
    triton.testing.do_bench, torch.compile = one_call, (lambda fn, **kw: fn)
    triton.testing.do_bench_cudagraph = lambda fn, **_: 1.0
    try:
        import kernel_bench

        rows = kernel_bench.bench_kernels(c, n, N, "cpu", 1.0, precision)
    finally:
        triton.testing.do_bench, triton.testing.do_bench_cudagraph, torch.compile = bench, graph, comp
        launch._n_sm, launch._PROJ_BWD_TMA = n_sm, tma
        for (mod, name), obj in saved.items():
            setattr(mod, name, obj)
    return [(r["kernel"], calls) for r, calls in zip(rows, per_call[1:])]  # per_call[0]: the warm-up


def record_dx_tma(c: int, n: int, N: int) -> list[tuple[str, tuple]]:
    """(label, recorded launch) of the TMA dx pass (dx_kernels.proj_dx_tma) at the launch tile, for
    both precisions, three-op / linked, both PROJ_DX_TMA_ACC orders, and with ACC the token loop
    pipelined (PROJ_DX_TMA_LOOP_STAGES 2 and 3: tl.range; 3 multi-buffers the TMA loads) and dφ formed
    in the pass (PROJ_DX_TMA_DPHI mode 1 in the plain loop; mode 2 with 2 loop stages, the default)."""
    from mhc_repro.kernels import dx_kernels, launch

    K, M, bf = n * c, n * n + 2 * n, torch.bfloat16
    x, dx, d_in = torch.empty(N, K, dtype=bf), torch.empty(N, K, dtype=bf), torch.empty(N, c, dtype=bf)
    link = (torch.empty(N, n, c, dtype=bf), torch.empty(N, n, n), torch.empty(N, n), d_in)
    dm, cc = torch.empty(N, M), torch.empty(N)
    # getattr: the tool also runs against older checkouts of the package (--dump-ptx to diff them)
    real, acc0, out = dx_kernels.proj_dx_tma, launch.PROJ_DX_TMA_ACC, []
    loop0 = getattr(launch, "PROJ_DX_TMA_LOOP_STAGES", 0)
    dphi0 = getattr(launch, "PROJ_DX_TMA_DPHI", 0)
    try:
        for prec in launch.PROJ_PRECISIONS:
            lo = prec == "bf16x2"
            MP = launch._p2(M, 16)
            p = torch.empty(K, 2 * MP if lo else MP, dtype=bf)  # φ's parts as launch._phi_parts lays them out
            for lk in (None, link):
                # ..., dφ in the pass as run 52 timed it (mode 1, plain loop), today's default (run 55)
                for acc, loop, dphi in ((False, 0, 0), (True, 0, 0), (True, 2, 0), (True, 3, 0), (True, 0, 1),
                                        (True, 2, 2)):
                    launch.PROJ_DX_TMA_ACC, launch.PROJ_DX_TMA_LOOP_STAGES = acc, loop
                    rec: list = []
                    dx_kernels.proj_dx_tma = Recorder(real, rec)
                    kw = dict(dphi=dphi) if dphi else {}  # older checkouts: no dφ in the pass
                    launch._launch_dx_tma(x, p, p.stride(0), MP, lo, dm, cc, dx, lk, **kw)
                    label = (f"TMA dx pass {'linked add' if lk else 'three-op'} [{prec}]{' ACC' if acc else ''}"
                             + (f" loop{loop}" if loop else "") + (f" dphi{dphi}" if dphi else ""))
                    fn, grid, a, kw = rec[0]
                    out.append((label, (fn, grid, a, dict(kw, INTERP=False))))
    finally:
        dx_kernels.proj_dx_tma, launch.PROJ_DX_TMA_ACC, launch.PROJ_DX_TMA_LOOP_STAGES = real, acc0, loop0
        if hasattr(launch, "PROJ_DX_TMA_DPHI"):
            launch.PROJ_DX_TMA_DPHI = dphi0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--C", type=int, default=2048)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=1024, help="only its divisibility matters for the compile")
    ap.add_argument("--precision", default="bf16x2", choices=["bf16x2", "bf16"])
    ap.add_argument("--json", default=None)
    ap.add_argument("--dump-ptx", default=None, metavar="DIR",
                    help="also write each compiled kernel's PTX there, debug lines dropped (to diff two commits' code)")
    ap.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                    help="launch constants first (as bench_mhc.py --set), e.g. PRE_NORM_BWD_PREFETCH=2")
    args = ap.parse_args()
    from bench_io import claim_out, write_json

    claim_out(ap, args.json, "--json")
    import triton

    from stack_variants import launch_settings

    launch_settings(args.set)

    print(f"triton {triton.__version__}, target cuda:90 (H200), C = {args.C}, n = {args.n}")
    print("table dx rows: the pointer dx pass (launch._PROJ_BWD_TMA = None); the TMA dx pass (default on sm_90) last")
    print(f"{'kernel table row':48} {'kernel':22} {'regs':>4} {'spill':>5} {'smem KB':>7} {'warps':>5} "
          f"{'blk/SM':>6} {'occ.':>5}  limit")
    out = []
    table = record_kernel_table(args.C, args.n, args.tokens, args.precision)
    table += [(label, [call]) for label, call in record_dx_tma(args.C, args.n, args.tokens)]
    for row, calls in table:
        for fn, _grid, a, kw in calls:
            k = compile_for_sm90(fn, a, kw)
            r = dict(row=row.strip(), kernel=fn.__name__, **resources(k))
            if args.dump_ptx:
                os.makedirs(args.dump_ptx, exist_ok=True)
                name = re.sub(r"[^A-Za-z0-9]+", "_", f"{r['row']}_{r['kernel']}").strip("_")
                with open(os.path.join(args.dump_ptx, name + ".ptx"), "w") as fh:
                    fh.write(code_lines(k.asm["ptx"]))
            if fn.__name__ == "proj_dx_tma":  # are its x / g / d_in TMA loads multi-buffered?
                r["tile_buffers"] = stream_tile_buffers(k, kw["BN"], kw["BK"])
            out.append(r)
            print(f"{r['row'][:48]:48} {r['kernel'][:22]:22} {r['regs']:4d} {r['spill_stack']:5d} "
                  f"{r['smem_kb']:7.1f} {r['warps']:5d} {r['blocks_per_sm']:6d} {r['occupancy']:5.1%}  {r['limit']}"
                  + (f"  (stream-tile buffers: {r['tile_buffers']})" if "tile_buffers" in r else ""))
    if args.json:
        write_json(args.json, dict(triton=triton.__version__, C=args.C, n=args.n, rows=out))


if __name__ == "__main__":
    main()
