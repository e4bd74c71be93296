"""Gluon probe of the cross-layer forward fusion: post_res and the next sub-layer's projection in one
kernel, the projection MMA reading the output tile from shared memory where it was written.

Hypothesis (docs/kernels.md, "Cross-layer forward fusion"): the fusion pays only if the projection
MMA is fed from the output tile in shared memory as written. The plain-Triton kernel (commit fff265c,
``kernels/cross_layer.py``) took 895 µs against 315 µs for post_res + proj_fwd at C = 2048, 16k
tokens, each rounded tile going registers -> shared memory -> MMA operand layout n times. Here a
Gluon (Hopper) kernel writes each rounded bf16 tile once to an NVMMA-swizzled shared buffer; that
buffer is both the wgmma A operand (against φ's [hi | lo] bf16 halves, TMA-loaded) and the source of
the TMA store of ``out``. x and f come in by TMA through an SX-stage ring; the async wgmma of chunk k
runs while chunk k+1's tiles are formed. A fused time clearly below the pair's supports the
hypothesis; one at or above it says that this design, at least, does not deliver it.

    out[t, i] = bf16(Σ_j h_res[t, i, j] x[t, j] + h_post[t, i] f[t])         (launch.launch_post_res)
    m[t] = out_flat[t]·(φ_hi + φ_lo),  ss[t] = Σ out_flat[t]²  (fp32)        (launch.launch_proj_fwd)

    python benchmarks/gluon_post_res_proj.py --out reports/kernels/runNNN_gluon.json     (H200)
    python benchmarks/gluon_post_res_proj.py --set ablate --out reports/kernels/runNNN_ablate.json   (H200)
    PYTHONPATH=.:/path/to/triton-3.6 python benchmarks/gluon_post_res_proj.py --compile-only  (no GPU)

Variants (--configs VARIANT,BC,WARPS,SX[,BT[,SP]]; a plain BC,WARPS,SX is the base variant):
- base: the kernel of runs 114-115 (one 64-token tile per program, TMA ring of SX chunks for x/f,
  2 for φ, one [BC, 2MP] φ operand, m through shared memory after the loop).
- persist: persistent (grid #SMs x blocks per SM); each program walks token tiles pid, pid + nprog,
  ... and its x/f and φ rings run on across tile boundaries. φ's hi and lo halves are two [BC, MP]
  operands with an accumulator each (m = acc_h + acc_l, no shared memory). One CTA barrier per chunk;
  the wait for chunk k-1's MMAs and stores comes after chunk k's tiles are formed, so φ has a chunk
  more of lead. BT 128 (4 or 8 warps): half the φ bytes per token.
- ws: persist's loop in the default partition (WARPS warps) of gl.warp_specialize, fed by two 1-warp
  loader partitions (x/f ring, φ ring) through ready / empty mbarriers: the loads run as far ahead as
  the rings allow, without waiting on the compute warps' instruction stream.

Options of ws (``ws+OPT[+OPT...],BC,...``; OPT_BITS in mhc_repro/kernels/gluon_xl.py), constexpr switches
of the same kernel. Ablations, timing only (smoke-run in the child process like any new config, never
checked, labelled "[ablation]", one kernel-only row each): nomma (no wgmma), nostore (no TMA store of
out), noload (x / f not loaded: stale slots; nostore and noload rows count the bytes still moved), nomix (out_i = x_i as loaded: no fp32 math, f's tile
not read), noss (no Σ out²), nophi (φ neither loaded nor waited for), copy (the structure ceiling: the
same rings and boxes, the x tiles TMA-stored straight from their slot; nothing through registers, no
MMA, no φ; the compiler drops the unused out buffers, blocks per SM stay as the tile's). Candidates,
checked like any config: early (free the x/f slot once its tiles are in registers, before the math:
the loader gets that much more lead), lag (wait for chunk g-2's MMAs and stores instead of g-1's: 3 out
buffers, SP >= 3), pack (round out two elements per cvt.rn.bf16x2.f32: the same rounding, half the
conversions), sepout (one shared allocation per out tile: Triton's barrier analysis puts a bar.sync
before each tile's store when the n tiles share one allocation under a runtime buffer index).
``--set ablate`` runs the ablation table, run 117's best tile and the candidates at C 2048 and 4096.

Correctness first, config by config (--check-shapes quick: N 1000 / 16384 at n 4, C 2048 and n 1,
C 256; full: N 1000 / 16384, n 1 / 2 / 4, C 256 / 2048): out against a float64 sum (within half a
bf16 step plus fp32 accumulation error, as launch_post_res), m and ss against a float64 reference
from the kernel's own bf16 out (max |err| / max |ref| ≤ 1e-4 for m, ≤ 1e-5 for ss). The persistent
variants also run at N 1000 on a grid of 3 programs (several tiles each). Before that, each new
variant runs once in a child process (--smoke): a hang or crash there is that config's FAIL, not
the run's. Only configs that pass are timed; any FAIL exits 1 at the end. Every result is printed
as soon as known and the JSON (--out) is rewritten after each config's checks and each C's timing;
a step that runs over 180 s ends the run with the record written (exit 3). Timed rows: with φ's
bf16x2 split (phi_split), as launch_proj_fwd splits φ on every call, and "kernel only" (φ split
once, outside the timing); the split alone is its own row.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections import namedtuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # mhc_repro
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))  # bench_io, kernel_resources

BT = 64  # tokens per program: one wgmma M tile (4 warps x 16 rows); the kernel reads it from x_desc
SMEM_MAX = 232448 - 1024  # an H200 block's shared memory, less the mbarriers and alignment

from mhc_repro.kernels.gluon_xl import (ABLATIONS, GLUON_ERROR, LOADER_REGS, OPT_BITS,  # noqa: E402
                                        TensorDescriptor, gl, p2, post_res_proj_gluon, post_res_proj_persist,
                                        post_res_proj_ws)


# ---------------------------------------------------------------- configurations
VARIANTS = ("base", "persist", "ws")
# BT: tokens per tile; SP: φ stages (base: 64, 2); opts: ws's OPT_BITS names (ablations, candidates), in bit order
Cfg = namedtuple("Cfg", "variant bc warps sx bt sp opts", defaults=((), ))
CONFIG_FORMAT = "[VARIANT[+OPT...],]BC,WARPS,SX[,BT[,SP]]"
# first: the base kernel's best tile (run 115), what the new variants are measured against; the others
# in order of risk (ws last: a hang there would be the likeliest, and the smoke test runs them apart)
CONFIGS = (
    Cfg("base", 64, 4, 2, 64, 2),
    Cfg("persist", 64, 4, 2, 64, 2),  # the base tile, persistent, one barrier per chunk, split φ
    Cfg("persist", 32, 4, 4, 64, 3),  # deeper x and φ rings at one 4-warp block per SM
    Cfg("persist", 32, 8, 2, 128, 2),  # 128 tokens per tile: half the φ traffic per token
    Cfg("ws", 64, 4, 2, 64, 2),  # the base tile with loader warps
    Cfg("ws", 32, 4, 6, 64, 2),  # loader warps and a 6-deep x ring (120 KB of x/f in flight)
    Cfg("ws", 32, 4, 4, 64, 3),
    Cfg("ws", 32, 8, 3, 128, 2),  # 128 tokens per tile, two compute warpgroups, 3-deep x ring
    Cfg("ws", 32, 4, 2, 64, 2),  # two blocks per SM (104 KB, .maxnreg 128), as the base's BC 32 tiles
)
SMEM_PER_SM = 232448  # an H200 SM's shared memory, as kernel_resources
_WS = Cfg("ws", 64, 4, 2, 64, 2)  # run 117's best tile (189.5 µs at C = 2048)
# --set ablate: what holds the ws kernel at ~76 % of copy. Ablations (timing only, not checked): one
# piece of the chunk's work removed at a time from run 117's best tile, then the structure ceiling
# ("copy": the same rings and TMA boxes, x tiles stored straight back, no registers / MMA / φ) for
# that tile and three others. Candidates (checked like any config): early release of the x/f slot,
# packed rounding, one allocation per out tile, the three together, and the MMA / store waits one
# chunk later (lag, 3 out buffers: BC 32 only fits) alone and with the other three, with its reference
# tile. Timed at C = 2048 and 4096 unless --C is given.
ABLATE_CONFIGS = (
    _WS,
    _WS._replace(opts=("nomma", )),
    _WS._replace(opts=("nostore", )),
    _WS._replace(opts=("nomix", )),
    _WS._replace(opts=("noss", )),
    _WS._replace(opts=("nophi", )),
    _WS._replace(opts=("nomix", "noss")),  # registers only move the tiles; MMA and stores as before
    _WS._replace(opts=("nomma", "nostore")),  # ring, tile forming and smem writes only (5 of 9 units move)
    _WS._replace(opts=("nomma", "nomix", "noss", "nophi")),  # ring -> registers -> smem -> TMA store
    _WS._replace(opts=("noload", )),  # no x / f from DRAM: tile forming, MMA and stores (4 of 9 units)
    _WS._replace(opts=("nostore", "noload")),  # the compute partition alone: math, MMA, syncs; no DRAM streams
    _WS._replace(opts=("copy", )),
    Cfg("ws", 32, 4, 2, 64, 2, ("copy", )),  # 64-byte rows, two blocks per SM
    Cfg("ws", 32, 4, 4, 64, 3, ("copy", )),  # 64-byte rows, the bytes of _WS's ring in 4 stages
    Cfg("ws", 32, 4, 6, 64, 2, ("copy", )),  # 6 stages (run 117: 65 % of copy with the math)
    _WS._replace(opts=("early", )),
    _WS._replace(opts=("pack", )),
    _WS._replace(opts=("sepout", )),
    _WS._replace(opts=("early", "pack", "sepout")),
    Cfg("ws", 32, 4, 4, 64, 3),  # run 117's other best (189.4 µs): the reference of the rows below
    Cfg("ws", 32, 4, 4, 64, 3, ("lag", )),
    Cfg("ws", 32, 4, 4, 64, 3, ("early", "lag", "pack", "sepout")),
)
SETS = {"ablate": (ABLATE_CONFIGS, [2048, 4096])}


def is_ablation(c: Cfg) -> bool:
    """Timing-only configs: their out / m / ss are wrong by design, so the checks skip them."""
    return any(o in ABLATIONS for o in c.opts)


def _vname(c: Cfg) -> str:
    return c.variant + "".join("+" + o for o in c.opts)


def cfg_str(c: Cfg) -> str:
    return f"{_vname(c)},{c.bc},{c.warps},{c.sx}" + ("" if c.variant == "base" else f",{c.bt},{c.sp}")


def cfg_label(c: Cfg) -> str:
    return (("[ablation] " if is_ablation(c) else "") + f"{_vname(c)} BC {c.bc} w {c.warps} SX {c.sx}"
            + ("" if c.variant == "base" else f" BT {c.bt} SP {c.sp}"))


def smem_estimate(c: Cfg, n: int = 4) -> int:
    """Bytes of the rings and out tiles (the kernels' metadata add the mbarriers and alignment)."""
    MP = p2(n * n + 2 * n)
    if c.variant == "base":  # x/f ring, φ ring (2 stages of [BC, 2MP]), two chunks' out tiles
        return 2 * (c.sx * (n + 1) * BT * c.bc + 2 * n * c.bc * 2 * MP + 2 * n * BT * c.bc)
    ob = 3 if "lag" in c.opts else 2  # out buffers
    return 2 * (c.sx * (n + 1) * c.bt * c.bc + c.sp * 2 * n * c.bc * MP + ob * n * c.bt * c.bc)


def ws_maxnreg(c: Cfg, n: int = 4):
    """.maxnreg of a ws launch: its warps are the compute warps plus a warpgroup for the two loader
    warps; Triton's default gives one block the whole register file, which is fine where shared
    memory allows one block per SM. Where it allows two, half of it."""
    if c.variant != "ws" or SMEM_PER_SM // (smem_estimate(c, n) + 2048) < 2:
        return None
    return 65536 // (2 * (c.warps + 4) * 32) // 8 * 8


def parse_configs(ap, items):
    out = []
    for s in items:
        f = s.split(",")
        head, *opts = f[0].split("+")
        named = head in VARIANTS
        variant = head if named else "base"
        nums = f[1:] if named else f
        if not named and (head.strip().isalpha() or opts):
            ap.error(f"--configs {s!r}: unknown variant {head!r}; one of {', '.join(VARIANTS)}")
        bad = [o for o in opts if o not in OPT_BITS]
        if bad or len(set(opts)) != len(opts):
            ap.error(f"--configs {s!r}: options are distinct names of {', '.join(OPT_BITS)}")
        if opts and variant != "ws":
            ap.error(f"--configs {s!r}: options (+{opts[0]}) exist for the ws variant only")
        if "copy" in opts and len(opts) > 1:
            ap.error(f"--configs {s!r}: +copy (the structure ceiling) takes no other option")
        try:
            nums = [int(v) for v in nums]
        except ValueError:
            nums = []
        if not 3 <= len(nums) <= 5:
            ap.error(f"--configs {s!r}: expected {CONFIG_FORMAT}, e.g. 64,4,2 (base) or ws,32,4,6")
        bc, w, sx, bt, sp = (nums + [64, 2][len(nums) - 3:])[:5]
        if bc not in (32, 64) or w not in (4, 8) or sx < 1:
            ap.error(f"--configs {s!r}: BC 32 or 64, WARPS 4 or 8, SX >= 1")
        if bt not in (64, 128) or not 2 <= sp <= 4 or (variant == "base" and (bt, sp) != (64, 2)):
            ap.error(f"--configs {s!r}: BT 64 or 128, SP 2 to 4; the base variant has BT 64 and SP 2 only")
        if variant != "base" and bt < 16 * w:
            ap.error(f"--configs {s!r}: {variant} needs BT >= 16 x WARPS (each warp 16 token rows of the MMA)")
        if "copy" in opts and sx < 2:
            ap.error(f"--configs {s!r}: +copy frees a chunk's slot at the next chunk: SX >= 2")
        if "lag" in opts and sp < 3:
            ap.error(f"--configs {s!r}: +lag frees a φ slot two chunks late: SP >= 3")
        c = Cfg(variant, bc, w, sx, bt, sp, tuple(sorted(opts, key=OPT_BITS.get)))
        smem = smem_estimate(c)
        if smem > SMEM_MAX:
            ap.error(f"--configs {s!r}: needs {smem // 1024} KB of shared memory at n = 4, over {SMEM_MAX // 1024}")
        out.append(c)
    return out


# ---------------------------------------------------------------- launches
def fused_launch(x, f, h_post, h_res, phi_buf, M: int, cfg: Cfg = CONFIGS[0]):
    """(kernel, grid, args, kwargs, (out, m, ss)) of one launch, one program per token tile (the
    persistent variants' grid is set by post_res_proj); CPU tensors will do for --compile-only."""
    N, n, C = x.shape
    MP = p2(M)
    bc, bt = cfg.bc, cfg.bt
    if C % bc or tuple(phi_buf.shape) != (n * C, 2 * MP) or phi_buf.dtype != torch.bfloat16:
        raise ValueError(f"need C % BC == 0 (C {C}, BC {bc}) and phi_buf bf16 [{n * C}, {2 * MP}] "
                         "(launch._phi_parts, bf16x2)")
    out = torch.empty_like(x)
    m = torch.empty(N, M, device=x.device, dtype=torch.float32)
    ss = torch.empty(N, device=x.device, dtype=torch.float32)
    lx = gl.NVMMASharedLayout.get_default_for([bt, bc], gl.bfloat16)
    # the streams as one [N, n*C] matrix (stream j's chunk c0 at column j*C + c0); the TMA unit
    # zero-fills rows >= N on load and drops them on store
    xd = TensorDescriptor(x.view(N, n * C), [N, n * C], [n * C, 1], [bt, bc], lx)
    fd = TensorDescriptor(f, [N, C], [C, 1], [bt, bc], lx)
    od = TensorDescriptor(out.view(N, n * C), [N, n * C], [n * C, 1], [bt, bc], lx)
    grid = ((N + bt - 1) // bt, )
    if cfg.variant == "base":
        lp = gl.NVMMASharedLayout.get_default_for([bc, 2 * MP], gl.bfloat16)
        pd = TensorDescriptor(phi_buf, [n * C, 2 * MP], [2 * MP, 1], [bc, 2 * MP], lp)
        args = (xd, fd, pd, od, h_post, h_res, m, ss, N, C, M)
        return post_res_proj_gluon, grid, args, dict(n=n, MP=MP, SX=cfg.sx, num_warps=cfg.warps), (out, m, ss)
    # φ's hi and lo halves as two [BC, MP] boxes of the same rows
    lp = gl.NVMMASharedLayout.get_default_for([bc, MP], gl.bfloat16)
    pd = TensorDescriptor(phi_buf, [n * C, 2 * MP], [2 * MP, 1], [bc, MP], lp)
    args = (xd, fd, pd, od, h_post, h_res, m, ss, N, C, M)
    kw = dict(n=n, MP=MP, SX=cfg.sx, SP=cfg.sp, num_warps=cfg.warps)
    if cfg.variant == "persist":
        return post_res_proj_persist, grid, args, kw, (out, m, ss)
    kw["LOADER_REGS"] = LOADER_REGS
    if cfg.opts:  # (none: the specialization of runs 117-118)
        kw["OPTS"] = sum(OPT_BITS[o] for o in cfg.opts)
    if ws_maxnreg(cfg, n) is not None:
        kw["maxnreg"] = ws_maxnreg(cfg, n)
    return post_res_proj_ws, grid, args, kw, (out, m, ss)


def blocks_per_sm(regs: int, smem: int, warps: int) -> int:
    """Resident blocks per H200 SM (as kernel_resources.resources; registers in units of 8 per thread)."""
    by_regs = 65536 // ((regs + 7) // 8 * 8 * 32 * warps)
    return max(1, min(by_regs, SMEM_PER_SM // (smem + 1024), 64 // warps, 32))


_PROGRAMS: dict = {}


def device_programs(fn, args, kw, device, smem_guess: int) -> int:
    """A persistent grid: #SMs x blocks per SM of the compiled kernel (looked up once per specialization;
    should that fail, blocks per SM from the shared-memory estimate)."""
    key = (fn.__name__, tuple(args[0].block_shape), tuple(sorted(kw.items())))
    if key not in _PROGRAMS:
        try:
            k = fn.warmup(*args, grid=(1, ), **kw)
            k._init_handles()  # loads it: n_regs
            bps = blocks_per_sm(k.n_regs, k.metadata.shared, k.metadata.num_warps)
        except Exception as e:  # noqa: BLE001 - only the grid size depends on it
            bps = max(1, SMEM_PER_SM // (smem_guess + 2048))
            print(f"   ({fn.__name__}: occupancy from the compiled kernel failed ({type(e).__name__}: "
                  f"{str(e)[:100]}); {bps} block(s) per SM from the shared-memory estimate)", flush=True)
        _PROGRAMS[key] = torch.cuda.get_device_properties(device).multi_processor_count * bps
    return _PROGRAMS[key]


def post_res_proj(x, f, h_post, h_res, phi_buf, M, cfg: Cfg = CONFIGS[0], programs=None):
    """(out [N, n, C] bf16, m [N, M] fp32, Σout² [N] fp32) in one launch; phi_buf from launch._phi_parts.
    programs: the persistent variants' grid (default #SMs x blocks per SM; the checks also run a
    small one, so that each program walks several tiles)."""
    if x.shape[0] == 0:  # a TMA descriptor needs a non-empty tensor
        return torch.empty_like(x), x.new_empty(0, M, dtype=torch.float32), x.new_empty(0, dtype=torch.float32)
    fn, grid, args, kw, res = fused_launch(x.contiguous(), f.contiguous(), h_post.float().contiguous(),
                                           h_res.float().contiguous(), phi_buf, M, cfg)
    if cfg.variant != "base":
        grid = (min(grid[0], programs or device_programs(fn, args, kw, x.device, smem_estimate(cfg, x.shape[1]))), )
    fn[grid](*args, **kw)
    return res


# ---------------------------------------------------------------- references
def reference_m_ss(out: torch.Tensor, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 (m [N, M], Σx² [N]) of the stream out [N, n, C], flattened stream-major as proj_fwd reads it."""
    v = out.double().reshape(out.shape[0], -1)
    return v @ phi.double(), v.pow(2).sum(-1)


def out_reference(x, f, h_post, h_res) -> tuple[torch.Tensor, torch.Tensor]:
    """(ref, bound) for out_err: ref = Σ_j h_res[i, j] x_j + h_post[i] f in float64; bound: half a bf16
    step of |ref| (2⁻⁸|ref| bounds it) plus fp32 accumulation error (2⁻²⁰ Σ|terms|)."""
    xd, fd = x.double(), f.double()
    ref = torch.einsum("tij,tjc->tic", h_res.double(), xd) + h_post.double()[..., None] * fd[:, None]
    mag = torch.einsum("tij,tjc->tic", h_res.double().abs(), xd.abs()) + (h_post.double().abs()[..., None] * fd.abs()[:, None])
    return ref, (2.0 ** -8 * ref.abs() + 2.0 ** -20 * mag).clamp_min(1e-300)


def out_err(out: torch.Tensor, x, f, h_post, h_res, ref_bound=None) -> float:
    """Largest |out − ref| over its allowed size (out_reference; pass its result as ref_bound to reuse
    it). ≤ 1: as exact as the fp32-accumulate-then-round op can be. (A count of bf16 steps is no measure
    near 0: two correct roundings of a sum that cancels to ~1e-6 differ by thousands of steps.)"""
    if not out.numel():
        return 0.0
    ref, bound = ref_bound if ref_bound is not None else out_reference(x, f, h_post, h_res)
    return float(((out.double() - ref).abs() / bound).max())


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max |ref|: m's entries near 0 have no meaningful relative error of their own."""
    return float((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-300)) if ref.numel() else 0.0


# ---------------------------------------------------------------- compile-only (no GPU)
def ptx_checks(cfg: Cfg, k, n: int) -> tuple[str, bool]:
    """What the PTX / TTGIR can tell without a GPU: one commit group per wgmma call (the waits count
    them: n per chunk for base, 2n for the split-φ variants) and per TMA store (n); for ws, the two
    1-warp partitions, their setmaxnreg, their mbarrier waits and the compute partition's named
    barriers (a bar.sync 0 over the whole CTA would wait for the loader warps forever)."""
    ptx, ttgir = k.asm["ptx"], k.asm["ttgir"]
    wg, st = ptx.count("wgmma.commit_group"), ptx.count("cp.async.bulk.commit_group")
    want_wg = 0 if {"nomma", "copy"} & set(cfg.opts) else n if cfg.variant == "base" else 2 * n
    want_st = 0 if "nostore" in cfg.opts else n
    said, ok = f"wgmma {wg}/{want_wg} store {st}/{want_st}", wg == want_wg and st == want_st
    if cfg.variant == "ws":
        parts = len(re.findall(r"partition\d+\(.*num_warps\(1\)", ttgir))
        waits = ptx.count("mbarrier.try_wait")
        named = len(re.findall(r"bar\.sync\s+\d+,\s*\d+;", ptx))
        whole = len(re.findall(r"bar\.sync\s+\d+;", ptx))
        setmax = ptx.count("setmaxnreg")
        said += f", partitions {parts}/2, try_wait {waits}, named bar {named}, whole-CTA bar {whole}, setmaxnreg {setmax}"
        # x: the loader's and the compute partition's waits, unless noload; φ: the same, unless nophi / copy
        # (a loader whose chunk count is 0 loses its loop)
        want_waits = 2 * ("noload" not in cfg.opts) + 2 * (not {"nophi", "copy"} & set(cfg.opts))
        ok = ok and parts == 2 and waits == want_waits and named > 0 and whole == 0 and setmax > 0
    return said, ok


def compile_only(configs, Cs, ns=(4, )):
    """Compile each config for sm_90 without a GPU (as kernel_resources.compile_for_sm90, through
    Gluon's AST source) and print its resources and PTX checks, for each C and stream count n."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import create_function_from_signature

    from kernel_resources import resources

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    N, rows = 128, []  # N = 128: divisible by 16, as 16384
    print(f"triton {triton.__version__}, target cuda:90")
    lw = max([34] + [len(cfg_label(c)) for c in configs])  # label width (34: the old tables' layout)
    print(f"{'C':>5} {'n':>1} {'config':{lw}} {'regs':>4} {'spill':>5} {'smem KB':>7} {'warps':>5} {'blk/SM':>6}  PTX checks")
    for C, n, cfg in ((C, n, cfg) for n in ns for C in Cs for cfg in configs):
        M = n * n + 2 * n
        x, f = torch.empty(N, n, C, dtype=torch.bfloat16), torch.empty(N, C, dtype=torch.bfloat16)
        phi_buf = torch.empty(n * C, 2 * p2(M), dtype=torch.bfloat16)
        r = dict(C=C, n=n, config=cfg_str(cfg), **cfg._asdict())
        try:
            fn, _, args, kw, _ = fused_launch(x, f, torch.empty(N, n), torch.empty(N, n, n), phi_buf, M, cfg)
            kw = dict(kw, debug=False, instrumentation_mode="")
            binder = create_function_from_signature(fn.signature, fn.params, backend)
            bound, spec, options = binder(*args, **kw)
            options, sig, constexprs, attrs = fn._pack_args(backend, kw, bound, spec, options)
            k = triton.compile(GluonASTSource(fn, sig, constexprs, attrs), target=target, options=options.__dict__)
            said, ok = ptx_checks(cfg, k, n)
            r.update(resources(k), ptx=said, ptx_ok=ok)
            r["ok"] = ok and r["spill_stack"] == 0 and k.metadata.shared + 1024 <= SMEM_PER_SM
            print(f"{C:5d} {n} {cfg_label(cfg):{lw}} {r['regs']:4d} {r['spill_stack']:5d} {r['smem_kb']:7.1f} "
                  f"{r['warps']:5d} {r['blocks_per_sm']:6d}  {said}{'' if r['ok'] else '  <- NOT OK'}", flush=True)
        except Exception as e:  # noqa: BLE001 - reported; the exit status says it
            r.update(ok=False, error=f"{type(e).__name__}: {e}"[:2000])
            print(f"{C:5d} {n} {cfg_label(cfg):{lw}} does not compile: {r['error'].splitlines()[0][:300]}", flush=True)
        rows.append(r)
    return rows


# ---------------------------------------------------------------- on the GPU
CHECK_SHAPES = {  # (N, n, C); N 1000: a partial tile
    "full": [(N, n, C) for N in (1000, 16384) for n in (1, 2, 4) for C in (256, 2048)],
    "quick": [(1000, 4, 2048), (16384, 4, 2048), (1000, 1, 256), (16384, 1, 256)],
}
SMALL_GRID = 3  # programs of the persistent variants' extra check at N 1000: several tiles per program


def make_inputs(N, n, C, seed=0, phi_std=0.02, device="cuda"):
    """Random x, f (bf16), H_post, H_res (a softmax: rows sum to 1) and φ, drawn on the CPU: the same
    values on every device."""
    g = torch.Generator().manual_seed(seed)
    M = n * n + 2 * n
    x = torch.randn(N, n, C, generator=g).bfloat16()
    f = torch.randn(N, C, generator=g).bfloat16()
    h_post = 2 * torch.sigmoid(torch.randn(N, n, generator=g))
    h_res = torch.softmax(torch.randn(N, n, n, generator=g), -1)
    phi = phi_std * torch.randn(n * C, M, generator=g)
    return [t.to(device) for t in (x, f, h_post, h_res, phi)] + [M]


def cuda_alive() -> bool:
    """False once the CUDA context is broken (a sticky error: illegal address, launch failure)."""
    try:
        torch.cuda.synchronize()
        return torch.ones(1, device="cuda").add(1).item() == 2.0
    except Exception:  # noqa: BLE001
        return False


class Watchdog:
    """Ends the process (after writing the record) if one step runs over limit_s: a kernel that never
    finishes would otherwise hold the run until the caller's timeout, and lose what was measured."""

    def __init__(self, limit_s: float, on_fire):
        self.limit_s, self.on_fire, self.what, self.since = limit_s, on_fire, None, time.monotonic()
        threading.Thread(target=self._watch, daemon=True).start()

    def step(self, what):
        self.what, self.since = what, time.monotonic()

    def _watch(self):
        while True:
            time.sleep(1.0)
            if self.what is not None and time.monotonic() - self.since > self.limit_s:
                self.on_fire(self.what)
                os._exit(3)


def smoke_child(configs) -> None:
    """--smoke: run each config once on small inputs (natural and small grid, n 4 and 1) and print
    'SMOKE ok|fail CONFIG ...' as soon as it is known; the parent kills this process on a hang."""
    for cfg in configs:
        try:
            for N, n, C, programs in ((1000, 4, 2048, None), (1000, 4, 2048, SMALL_GRID), (1000, 1, 256, SMALL_GRID)):
                if C % cfg.bc:
                    continue
                g = torch.Generator(device="cuda").manual_seed(1)
                M = n * n + 2 * n
                x = torch.randn(N, n, C, device="cuda", generator=g).bfloat16()
                f = torch.randn(N, C, device="cuda", generator=g).bfloat16()
                hp, hr = torch.rand(N, n, device="cuda"), torch.rand(N, n, n, device="cuda")
                phi_buf = torch.randn(n * C, 2 * p2(M), device="cuda", generator=g).bfloat16()
                post_res_proj(x, f, hp, hr, phi_buf, M, cfg, programs)
                torch.cuda.synchronize()
            print(f"SMOKE ok {cfg_str(cfg)}", flush=True)
        except Exception as e:  # noqa: BLE001 - reported to the parent
            print(f"SMOKE fail {cfg_str(cfg)} {type(e).__name__}: {e}".replace("\n", " ")[:600], flush=True)
            if not cuda_alive():
                print("SMOKE restart", flush=True)  # the parent starts a fresh process for the configs left
                sys.exit(3)


def smoke(configs, timeout_s: float) -> dict:
    """{config: None (ran) or why not} for the non-base configs, each run first in a child process
    (smoke_child): a hang or a crash there costs that config, not the run. Its compiled kernels stay
    in Triton's cache for this process."""
    todo, verdict = [c for c in configs if c.variant != "base"], {}
    while todo:
        cmd = [sys.executable, os.path.abspath(__file__), "--smoke", "--configs", *[cfg_str(c) for c in todo]]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
        lines: queue.Queue = queue.Queue()

        def pump(stream=proc.stdout, q=lines):
            for line in stream:
                q.put(line)
            q.put(None)

        threading.Thread(target=pump, daemon=True).start()
        tail: list = []
        while todo:
            try:
                line = lines.get(timeout=timeout_s)
            except queue.Empty:
                proc.kill()
                proc.wait()
                verdict[todo[0]] = f"hang: no result within {timeout_s:.0f} s (smoke test, N 1000)"
                print(f"   smoke {cfg_label(todo.pop(0))}: HANG, killed after {timeout_s:.0f} s", flush=True)
                break
            if line is None:  # the child ended without a verdict on todo[0]
                rc = proc.wait()
                verdict[todo[0]] = f"smoke process died (rc {rc}): " + " | ".join(tail[-4:])[:600]
                print(f"   smoke {cfg_label(todo.pop(0))}: process died (rc {rc})", flush=True)
                break
            if not line.startswith("SMOKE "):
                tail.append(line.rstrip())
                continue
            if line.startswith("SMOKE restart"):
                proc.wait()
                break
            _, status, cs, *why = line.rstrip("\n").split(" ", 3)
            c = next(c for c in todo if cfg_str(c) == cs)
            todo.remove(c)
            verdict[c] = None if status == "ok" else (" ".join(why) or "failed")
            print(f"   smoke {cfg_label(c)}: {'ran' if status == 'ok' else 'FAIL ' + verdict[c][:300]}", flush=True)
        else:
            proc.wait()
    return verdict


def check(L, configs, shapes, record, save) -> list:
    """Float64 checks, config by config (each printed as soon as known); returns the configs that
    passed, and the ablations (timing only: they ran in the smoke test, their results are wrong by
    design). A config that fails or crashes does not stop the others unless the CUDA context is gone."""
    data = {}
    for N, n, C in shapes:
        x, f, hp, hr, phi, M = make_inputs(N, n, C)
        base = L.launch_post_res(x, f, hp, hr)
        bm, bss = L.launch_proj_fwd(base.view(N, n * C), phi, M, "bf16x2")
        rm, rss = reference_m_ss(base, phi)
        rb = out_reference(x, f, hp, hr)
        print(f"N {N:5d} n {n} C {C:4d}   post_res + proj_fwd: out {out_err(base, x, f, hp, hr, rb):.2f}, "
              f"m {rel_err(bm, rm):.1e}, ss {rel_err(bss, rss):.1e}", flush=True)
        data[(N, n, C)] = (x, f, hp, hr, phi, M, base, rb, L._phi_parts(phi, x, "bf16x2", p2(M))[0])
    passed, alive = [], True
    lw = max([34] + [len(cfg_label(c)) for c in configs])  # label width (34: the old logs' layout)
    for cfg in configs:
        if is_ablation(cfg):
            print(f"   {cfg_label(cfg):{lw}} ABLATION: timing only, not checked", flush=True)
            record["checks"].append(dict(config=cfg_str(cfg), ablation=True, **{"pass": None}, **cfg._asdict()))
            passed.append(cfg)
            continue
        cfg_ok, raised = True, False
        for N, n, C in shapes:
            if C % cfg.bc:
                continue
            x, f, hp, hr, phi, M, base, rb, phi_buf = data[(N, n, C)]
            for programs in (None, SMALL_GRID) if cfg.variant != "base" and N < 16 * 132 else (None, ):
                r = dict(N=N, n=n, C=C, config=cfg_str(cfg), programs=programs, **cfg._asdict())
                WATCH.step(f"check {cfg_label(cfg)} N {N} n {n} C {C} programs {programs}")
                if not alive:
                    r.update(error="not run: the CUDA context was lost earlier", **{"pass": False})
                elif raised:
                    r.update(error="not run: this config raised on an earlier shape", **{"pass": False})
                else:
                    try:  # a config that does not compile or launch is a FAIL; the others still report
                        out, m, ss = post_res_proj(x, f, hp, hr, phi_buf, M, cfg, programs)
                        rm, rss = reference_m_ss(out, phi)  # m and Σx² of the stream this kernel wrote
                        r.update(out_err=out_err(out, x, f, hp, hr, rb), out_differ=int((out != base).sum()),
                                 m_err=rel_err(m, rm), ss_err=rel_err(ss, rss))
                        r["pass"] = r["out_err"] <= 1 and r["m_err"] <= 1e-4 and r["ss_err"] <= 1e-5
                    except Exception as e:  # noqa: BLE001 - reported, and the run fails at the end
                        r.update(error=f"{type(e).__name__}: {e}"[:500], **{"pass": False})
                        raised, alive = True, cuda_alive()
                if "error" in r:
                    said = r["error"].splitlines()[0][:200]
                else:
                    said = (f"out {r['out_err']:.2f} of bound ({r['out_differ']} differ from post_res), "
                            f"m {r['m_err']:.1e}, ss {r['ss_err']:.1e}")
                cfg_ok &= r["pass"]
                record["checks"].append(r)
                grid = f" grid {programs}" if programs else ""
                print(f"   {cfg_label(cfg):{lw}} N {N:5d} n {n} C {C:4d}{grid}: {said}  "
                      f"{'PASS' if r['pass'] else 'FAIL'}", flush=True)
        if cfg_ok:
            passed.append(cfg)
        save()
    return passed


def time_us(fn, reps: int, warmup: int = 10) -> float:
    """Median device time of one call (CUDA events around each; the queue stays ahead of the GPU)."""
    for _ in range(warmup):
        fn()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for a, b in ev:
        a.record()
        fn()
        b.record()
    torch.cuda.synchronize()
    return sorted(a.elapsed_time(b) for a, b in ev)[reps // 2] * 1e3


def bench(L, configs, Cs, N, reps, record, save) -> None:
    n = 4
    for C in Cs:
        WATCH.step(f"timing inputs C {C}")
        x, f, hp, hr, phi, M = make_inputs(N, n, C)
        MP, post = p2(M), L.launch_post_res(x, f, hp, hr)
        phi_buf = L._phi_parts(phi, x, "bf16x2", MP)[0]
        unit, small = N * C * 2, N * (M + 1) * 4  # one [N, C] bf16 tensor; m and Σx²
        fused = (2 * n + 1) * unit + small  # x, f in; out, m, Σx² out (φ from L2, not counted)
        cases = [("copy x [N, n, C] (reference)", lambda: x.clone(), 2 * n * unit),
                 ("post_res", lambda: L.launch_post_res(x, f, hp, hr), (2 * n + 1) * unit),
                 ("proj_fwd (with phi_split)", lambda: L.launch_proj_fwd(post.view(N, n * C), phi, M, "bf16x2"),
                  n * unit + small),
                 ("post_res + proj_fwd (pair)", lambda: L.launch_proj_fwd(
                     L.launch_post_res(x, f, hp, hr).view(N, n * C), phi, M, "bf16x2"), fused + n * unit),
                 ("phi_split alone", lambda: L._phi_parts(phi, x, "bf16x2", MP), 0)]
        cfg_of = {}  # a fused row's config, for the JSON
        for cfg in configs:
            if C % cfg.bc:
                continue
            cfg_of.update({f"{cfg_label(cfg)} (with phi_split)": cfg, f"{cfg_label(cfg)} (kernel only)": cfg})
            if not is_ablation(cfg):
                cases.append((f"{cfg_label(cfg)} (with phi_split)", lambda cfg=cfg: post_res_proj(
                    x, f, hp, hr, L._phi_parts(phi, x, "bf16x2", MP)[0], M, cfg), fused))
            # an ablation's bytes: what it still moves (nostore: no out; noload: no x, f)
            moved = fused - n * unit * ("nostore" in cfg.opts) - (n + 1) * unit * ("noload" in cfg.opts)
            cases.append((f"{cfg_label(cfg)} (kernel only)",
                          lambda cfg=cfg: post_res_proj(x, f, hp, hr, phi_buf, M, cfg), moved))
        if len(cases) > 5 + 6:  # many rows: the first config once more at the end, for drift over the table
            c0 = next(c for c in configs if C % c.bc == 0)
            name = f"{cfg_label(c0)} (kernel only, again: drift)"
            cfg_of[name] = c0
            cases.append((name, lambda: post_res_proj(x, f, hp, hr, phi_buf, M, c0), next(
                nb for nm, _, nb in cases if nm == f"{cfg_label(c0)} (kernel only)")))
        res = {}
        for name, fn, nbytes in cases:
            WATCH.step(f"timing C {C}: {name}")
            try:
                res[name] = (time_us(fn, reps), nbytes)
            except Exception as e:  # noqa: BLE001 - a row that fails here is reported, not timed
                print(f"{name}: timing failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
                record["rows"].append(dict(n=n, C=C, N=N, case=name, error=f"{type(e).__name__}: {e}"[:500]))
                if not cuda_alive():
                    save()
                    raise SystemExit("FAIL: the CUDA context was lost while timing (above)")
        if any(name not in res for name, _, _ in cases[:4]):
            print(f"C {C}: a reference row failed; no table", flush=True)
            continue
        copy_us = res[cases[0][0]][0]
        pair = res[cases[3][0]][0]
        copy_gbps = res[cases[0][0]][1] / copy_us / 1e3
        first = next((res[nm][0] for nm, _, _ in cases[5:] if nm.endswith("(kernel only)") and nm in res), None)
        print(f"\nn {n}, C {C}, N {N}: median of {reps} calls; / first: µs over the first config's kernel-only µs")
        lw = max([62] + [len(name) for name in res])
        print(f"{'':{lw}} {'µs':>8} {'MB':>7} {'GB/s':>6} {'% copy':>6} {'/ pair':>6} {'/ first':>7}")
        for name, (us, nbytes) in res.items():
            gbps = nbytes / us / 1e3
            rel = f"{us / first:7.3f}" if first else ""
            print(f"{name:{lw}} {us:8.1f} {nbytes / 1e6:7.1f} {gbps:6.0f} {100 * gbps / copy_gbps:5.0f}% {us / pair:6.2f} {rel}")
            c = cfg_of.get(name)
            record["rows"].append(dict(n=n, C=C, N=N, case=name, us=us, bytes=nbytes, gbps=gbps,
                                       pct_copy=100 * gbps / copy_gbps, ratio_to_pair=us / pair,
                                       ratio_to_first=us / first if first else None,
                                       config=cfg_str(c) if c else None, ablation=bool(c and is_ablation(c))))
        sys.stdout.flush()
        save()


WATCH = None


def main() -> None:
    global WATCH
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compile-only", action="store_true", help="compile for sm_90 on CPU and print resources")
    ap.add_argument("--set", choices=sorted(SETS), default=None,
                    help="ablate: the ablation table, run 117's best tile and the candidates (ws OPTS), at C 2048 "
                         "and 4096; --configs / --C given explicitly win")
    ap.add_argument("--C", type=int, nargs="+", default=None, help="channel widths (default 2048 2560 4096)")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--configs", nargs="+", default=None, metavar=CONFIG_FORMAT,
                    help="fused-kernel variants and tiles: base / persist / ws, channel chunk, warps (ws: of the "
                         "compute partition), x/f TMA stages, tokens per tile, φ stages (first: the reference); "
                         f"ws takes +OPT suffixes: ablations {', '.join('+' + a for a in ABLATIONS)} (timing "
                         "only, not checked), candidates " + ", ".join('+' + o for o in OPT_BITS if o not in ABLATIONS))
    ap.add_argument("--check-shapes", choices=sorted(CHECK_SHAPES), default="quick",
                    help="quick: N 1000 / 16384 at n 4, C 2048 and n 1, C 256; full: n 1 / 2 / 4 x C 256 / 2048")
    ap.add_argument("--smoke-timeout", type=float, default=90.0,
                    help="seconds a new variant's smoke test may go without a result before it counts as a hang")
    ap.add_argument("--n", type=int, nargs="+", default=[4], help="stream counts to compile (--compile-only)")
    ap.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)  # the child of smoke()
    ap.add_argument("--out", default=None, help="JSON record (refused if the file exists)")
    args = ap.parse_args()
    set_configs, set_C = SETS[args.set] if args.set else (CONFIGS, [2048, 2560, 4096])
    args.C = args.C or set_C
    configs = parse_configs(ap, args.configs or [cfg_str(c) for c in set_configs])
    if any(c <= 0 or c % cfg.bc for c in args.C for cfg in configs):
        ap.error(f"--C {args.C}: each must be a positive multiple of every config's BC")
    if args.tokens <= 0 or args.reps < 50:
        ap.error("--tokens must be positive and --reps at least 50")
    from bench_io import claim_out, require_cuda, write_json

    claim_out(ap, args.out)
    if GLUON_ERROR is not None:
        raise SystemExit(f"gluon_post_res_proj.py: triton.experimental.gluon does not import ({GLUON_ERROR})")
    if args.compile_only:
        rows = compile_only(configs, args.C, args.n)
        if args.out:
            write_json(args.out, dict(mode="compile-only", rows=rows))
        bad = sorted({r["config"] for r in rows if not r["ok"]})
        if bad:
            print(f"NOT OK (spills, over shared memory, a PTX check or no compile): {' '.join(bad)}")
        sys.exit(1 if bad else 0)
    require_cuda("gluon_post_res_proj.py")
    if args.smoke:
        smoke_child(configs)
        return
    import triton

    from mhc_repro.kernels import launch as L

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    except OSError:  # no git on the machine
        head = ""
    record = dict(torch=torch.__version__, triton=triton.__version__, commit=head or None, set=args.set,
                  device=torch.cuda.get_device_name(), tokens=args.tokens, reps=args.reps,
                  configs=[cfg_str(c) for c in configs], check_shapes=args.check_shapes, smoke={}, checks=[], rows=[])

    def save():
        if args.out:
            write_json(args.out, record)

    def fire(what):
        record["hung"] = what
        print(f"\nHANG: '{what}' ran over {WATCH.limit_s:.0f} s; record written{' to ' + args.out if args.out else ''}; "
              "exiting", flush=True)
        save()

    WATCH = Watchdog(180.0, fire)
    t0 = time.monotonic()
    verdict = smoke(configs, args.smoke_timeout)
    record["smoke"] = {cfg_str(c): v or "ran" for c, v in verdict.items()}
    for c, why in verdict.items():
        if why is not None:
            record["checks"].append(dict(config=cfg_str(c), error=f"smoke test: {why}", **{"pass": False}, **c._asdict()))
    runnable = [c for c in configs if verdict.get(c) is None]
    print(f"smoke tests: {time.monotonic() - t0:.0f} s", flush=True)
    save()
    with L.direct_launches():
        passed = check(L, runnable, CHECK_SHAPES[args.check_shapes], record, save)
        failed = [cfg_str(c) for c in configs if c not in passed]
        record["failed"] = failed
        print(f"checks done at {time.monotonic() - t0:.0f} s; " + (f"FAIL: {' '.join(failed)}" if failed else "all PASS"),
              flush=True)
        save()
        if passed:
            bench(L, passed, args.C, args.tokens, args.reps, record, save)
    WATCH.step(None)
    save()
    print(f"done at {time.monotonic() - t0:.0f} s", flush=True)
    if failed:
        raise SystemExit(f"FAIL: {' '.join(failed)} (above); only the configs that passed were timed")


if __name__ == "__main__":
    main()
