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
    PYTHONPATH=.:/path/to/triton-3.6 python benchmarks/gluon_post_res_proj.py --compile-only  (no GPU)

Correctness first (N 1000 / 16384, n 1 / 2 / 4, C 256 / 2048; every config): out against
a float64 sum (within half a bf16 step plus fp32 accumulation error, as launch_post_res), m and ss against a float64 reference from the kernel's own
bf16 out (max |err| / max |ref| ≤ 1e-4 for m, ≤ 1e-5 for ss); any FAIL exits 1 before timing. Timed
rows include φ's bf16x2 split (phi_split) wherever it runs: launch_proj_fwd splits φ on every call,
so the fused rows do too; the split alone is its own row.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # mhc_repro
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))  # bench_io, kernel_resources

BT = 64  # tokens per program: one wgmma M tile (4 warps x 16 rows); the kernel reads it from x_desc
SMEM_MAX = 232448 - 1024  # an H200 block's shared memory, less the mbarriers and alignment
CHECK_SHAPES = [(N, n, C) for N in (1000, 16384) for n in (1, 2, 4) for C in (256, 2048)]  # 1000: a partial block
CONFIGS = ((64, 4, 2), (64, 8, 2), (32, 4, 2), (32, 8, 2), (32, 4, 3))  # (BC, num_warps, SX)

try:  # --help, the argument checks and the reference run without Gluon (CPU tests)
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma,
                                                                  warpgroup_mma, warpgroup_mma_wait)
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    GLUON_ERROR = None
except ImportError as e:  # pragma: no cover - depends on the installed Triton
    GLUON_ERROR = e

    class gluon:  # noqa: N801 - stands in for the module so the kernels below still define
        jit = staticmethod(lambda fn: fn)


@gluon.jit
def _load_x(x_desc, f_desc, xs, bar, slot, t0, c0, C, n: gl.constexpr):
    mbarrier.expect(bar, (n + 1) * x_desc.block_type.nbytes)
    for j in gl.static_range(n):
        tma.async_copy_global_to_shared(x_desc, [t0, j * C + c0], bar, xs.index(slot * (n + 1) + j))
    tma.async_copy_global_to_shared(f_desc, [t0, c0], bar, xs.index(slot * (n + 1) + n))


@gluon.jit
def _load_phi(phi_desc, ps, bar, slot, c0, C, n: gl.constexpr):
    mbarrier.expect(bar, n * phi_desc.block_type.nbytes)
    for i in gl.static_range(n):
        tma.async_copy_global_to_shared(phi_desc, [i * C + c0, 0], bar, ps.index(slot * n + i))


@gluon.jit
def post_res_proj_gluon(x_desc, f_desc, phi_desc, out_desc, hp_ptr, hr_ptr, m_ptr, ss_ptr, N, C, M,
                        n: gl.constexpr, MP: gl.constexpr, SX: gl.constexpr, num_warps: gl.constexpr):
    BT: gl.constexpr = x_desc.block_type.shape[0]
    BC: gl.constexpr = x_desc.block_type.shape[1]
    SP: gl.constexpr = 2  # φ stages: chunk k+1's φ loads while chunk k's tiles are formed
    # one token row per thread: the n*n + n coefficients cost one register each, Σx² stays in a warp
    TPR: gl.constexpr = BT // num_warps
    XL: gl.constexpr = gl.BlockedLayout([1, 8], [TPR, 32 // TPR], [num_warps, 1], [1, 0])
    RL: gl.constexpr = gl.SliceLayout(1, XL)
    WN: gl.constexpr = num_warps // 4
    ACC: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, WN],
                                                  instr_shape=[16, 2 * MP // WN, 16])
    t0 = gl.program_id(0) * BT
    nk = C // BC
    rows = t0 + gl.arange(0, BT, layout=RL)
    tm = rows < N
    hp = ()
    for i in gl.static_range(n):
        hp = hp + (gl.load(hp_ptr + rows * n + i, mask=tm, other=0.0), )
    hr = ()
    for ij in gl.static_range(n * n):
        hr = hr + (gl.load(hr_ptr + rows * (n * n) + ij, mask=tm, other=0.0), )

    xs = gl.allocate_shared_memory(gl.bfloat16, [SX * (n + 1), BT, BC], x_desc.layout)  # x_0..x_{n-1}, f
    ps = gl.allocate_shared_memory(gl.bfloat16, [SP * n, BC, 2 * MP], phi_desc.layout)
    os_ = gl.allocate_shared_memory(gl.bfloat16, [2 * n, BT, BC], out_desc.layout)  # two chunks' out tiles
    xbar = gl.allocate_shared_memory(gl.int64, [SX, 1], mbarrier.MBarrierLayout())
    pbar = gl.allocate_shared_memory(gl.int64, [SP, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(SX):
        mbarrier.init(xbar.index(s), count=1)
    for s in gl.static_range(SP):
        mbarrier.init(pbar.index(s), count=1)
    fence_async_shared()
    gl.thread_barrier()
    for s in gl.static_range(SX):
        if s < nk:
            _load_x(x_desc, f_desc, xs, xbar.index(s), s, t0, s * BC, C, n)
    for s in gl.static_range(SP):
        if s < nk:
            _load_phi(phi_desc, ps, pbar.index(s), s, s * BC, C, n)

    acc = gl.zeros([BT, 2 * MP], gl.float32, layout=ACC)
    ss = gl.zeros([BT], gl.float32, layout=RL)
    for k in range(nk):
        c0 = k * BC
        sx = k % SX
        ob = k % 2
        mbarrier.wait(xbar.index(sx), (k // SX) & 1)
        xv = ()
        for j in gl.static_range(n):
            xv = xv + (xs.index(sx * (n + 1) + j).load(XL), )
        fv = xs.index(sx * (n + 1) + n).load(XL).to(gl.float32)
        for i in gl.static_range(n):
            # launch_post_res's order: Σ_j in j order, then h_post·f; fp32, rounded once
            o = gl.expand_dims(hr[i * n], 1) * xv[0].to(gl.float32)
            for j in gl.static_range(1, n):
                o = o + gl.expand_dims(hr[i * n + j], 1) * xv[j].to(gl.float32)
            o = o + gl.expand_dims(hp[i], 1) * fv
            r = o.to(gl.bfloat16)
            rf = r.to(gl.float32)
            ss = ss + gl.sum(rf * rf, axis=1)
            os_.index(ob * n + i).store(r)
        # generic-proxy writes (out tiles) and reads (x stage sx) ordered before the async proxy's
        # TMA store / wgmma reads and the TMA refill of stage sx; the barrier makes it CTA-wide
        fence_async_shared()
        gl.thread_barrier()
        if k + SX < nk:
            _load_x(x_desc, f_desc, xs, xbar.index(sx), sx, t0, c0 + SX * BC, C, n)
        for i in gl.static_range(n):
            tma.async_copy_shared_to_global(out_desc, [t0, i * C + c0], os_.index(ob * n + i))
        sp = k % SP
        mbarrier.wait(pbar.index(sp), (k // SP) & 1)
        for i in gl.static_range(n):
            acc = warpgroup_mma(os_.index(ob * n + i), ps.index(sp * n + i), acc, is_async=True)
        # leave this chunk's n MMAs (and n TMA stores) in flight over the next chunk's tiles; chunk
        # k-1's are done, so out buffer 1-ob and φ stage (k-1)%SP may be overwritten. Both waits are
        # per warpgroup / per issuing thread: the barrier publishes them to every warp.
        acc = warpgroup_mma_wait(num_outstanding=n, deps=(acc, ))
        tma.store_wait(pendings=n)
        gl.thread_barrier()
        if k >= 1:
            if k - 1 + SP < nk:
                _load_phi(phi_desc, ps, pbar.index((k - 1) % SP), (k - 1) % SP, (k - 1 + SP) * BC, C, n)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc, ))
    tma.store_wait(pendings=0)
    gl.thread_barrier()  # every warpgroup's MMAs and the stores done: epi may reuse their buffers
    for s in gl.static_range(SX):
        mbarrier.invalidate(xbar.index(s))
    for s in gl.static_range(SP):
        mbarrier.invalidate(pbar.index(s))

    # m = acc[:, :MP] + acc[:, MP:] (φ_hi and φ_lo products), through shared memory once per program
    ML: gl.constexpr = gl.BlockedLayout([1, 4], [8, 4], [num_warps, 1], [1, 0])
    epi = gl.allocate_shared_memory(gl.float32, [BT, 2 * MP], gl.SwizzledSharedLayout(1, 1, 1, [1, 0]))
    epi.store(acc)
    gl.thread_barrier()
    mv = epi.slice(0, MP, dim=1).load(ML) + epi.slice(MP, MP, dim=1).load(ML)
    mr = t0 + gl.arange(0, BT, layout=gl.SliceLayout(1, ML))
    mc = gl.arange(0, MP, layout=gl.SliceLayout(0, ML))
    mmask = gl.expand_dims(mr < N, 1) & gl.expand_dims(mc < M, 0)
    gl.store(m_ptr + gl.expand_dims(mr, 1) * M + gl.expand_dims(mc, 0), mv, mask=mmask)
    gl.store(ss_ptr + rows, ss, mask=tm)


def p2(v: int, lo: int = 16) -> int:
    return max(lo, 1 << (v - 1).bit_length())  # launch._p2(M, 16): φ's padded width MP


def fused_launch(x, f, h_post, h_res, phi_buf, M: int, bc: int, warps: int, sx: int):
    """(grid, args, kwargs, (out, m, ss)) of one launch; CPU tensors will do for --compile-only."""
    N, n, C = x.shape
    MP = p2(M)
    if C % bc or tuple(phi_buf.shape) != (n * C, 2 * MP) or phi_buf.dtype != torch.bfloat16:
        raise ValueError(f"need C % BC == 0 (C {C}, BC {bc}) and phi_buf bf16 [{n * C}, {2 * MP}] "
                         "(launch._phi_parts, bf16x2)")
    out = torch.empty_like(x)
    m = torch.empty(N, M, device=x.device, dtype=torch.float32)
    ss = torch.empty(N, device=x.device, dtype=torch.float32)
    lx = gl.NVMMASharedLayout.get_default_for([BT, bc], gl.bfloat16)
    lp = gl.NVMMASharedLayout.get_default_for([bc, 2 * MP], gl.bfloat16)
    # the streams as one [N, n*C] matrix (stream j's chunk c0 at column j*C + c0); the TMA unit
    # zero-fills rows >= N on load and drops them on store
    xd = TensorDescriptor(x.view(N, n * C), [N, n * C], [n * C, 1], [BT, bc], lx)
    fd = TensorDescriptor(f, [N, C], [C, 1], [BT, bc], lx)
    pd = TensorDescriptor(phi_buf, [n * C, 2 * MP], [2 * MP, 1], [bc, 2 * MP], lp)
    od = TensorDescriptor(out.view(N, n * C), [N, n * C], [n * C, 1], [BT, bc], lx)
    args = (xd, fd, pd, od, h_post, h_res, m, ss, N, C, M)
    return ((N + BT - 1) // BT, ), args, dict(n=n, MP=MP, SX=sx, num_warps=warps), (out, m, ss)


def post_res_proj(x, f, h_post, h_res, phi_buf, M, bc=64, warps=4, sx=2):
    """(out [N, n, C] bf16, m [N, M] fp32, Σout² [N] fp32) in one launch; phi_buf from launch._phi_parts."""
    if x.shape[0] == 0:  # a TMA descriptor needs a non-empty tensor
        return torch.empty_like(x), x.new_empty(0, M, dtype=torch.float32), x.new_empty(0, dtype=torch.float32)
    grid, args, kw, res = fused_launch(x.contiguous(), f.contiguous(), h_post.float().contiguous(),
                                       h_res.float().contiguous(), phi_buf, M, bc, warps, sx)
    post_res_proj_gluon[grid](*args, **kw)
    return res


def reference_m_ss(out: torch.Tensor, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 (m [N, M], Σx² [N]) of the stream out [N, n, C], flattened stream-major as proj_fwd reads it."""
    v = out.double().reshape(out.shape[0], -1)
    return v @ phi.double(), v.pow(2).sum(-1)


def out_err(out: torch.Tensor, x, f, h_post, h_res) -> float:
    """Largest |out − ref| over its allowed size, ref = Σ_j h_res[i, j] x_j + h_post[i] f in float64: half a
    bf16 step of |ref| (2⁻⁸|ref| bounds it) plus fp32 accumulation error (2⁻²⁰ Σ|terms|). ≤ 1: as exact
    as the fp32-accumulate-then-round op can be. (A count of bf16 steps is no measure near 0: two
    correct roundings of a sum that cancels to ~1e-6 differ by thousands of steps.)"""
    xd, fd = x.double(), f.double()
    ref = torch.einsum("tij,tjc->tic", h_res.double(), xd) + h_post.double()[..., None] * fd[:, None]
    mag = torch.einsum("tij,tjc->tic", h_res.double().abs(), xd.abs()) + (h_post.double().abs()[..., None] * fd.abs()[:, None])
    bound = 2.0 ** -8 * ref.abs() + 2.0 ** -20 * mag
    return float(((out.double() - ref).abs() / bound.clamp_min(1e-300)).max()) if out.numel() else 0.0


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max |ref|: m's entries near 0 have no meaningful relative error of their own."""
    return float((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-300)) if ref.numel() else 0.0


def parse_configs(ap, items):
    out = []
    for s in items:
        try:
            bc, w, sx = (int(v) for v in s.split(","))
        except ValueError:
            ap.error(f"--configs {s!r}: expected BC,WARPS,SX, e.g. 64,4,2")
        if bc not in (32, 64) or w not in (4, 8) or sx < 1:
            ap.error(f"--configs {s!r}: BC 32 or 64, WARPS 4 or 8, SX >= 1")
        # x/f ring, φ ring (2 stages), two chunks' out tiles at n = 4; BC 128 fits at no SX
        smem = 2 * (sx * 5 * BT * bc + 2 * 4 * bc * 64 + 2 * 4 * BT * bc)
        if smem > SMEM_MAX:
            ap.error(f"--configs {s!r}: needs {smem // 1024} KB of shared memory at n = 4, over {SMEM_MAX // 1024}")
        out.append((bc, w, sx))
    return out


def compile_only(configs, Cs, n=4):
    """Compile each config for sm_90 without a GPU (as kernel_resources.compile_for_sm90, through
    Gluon's AST source) and print its resources. The waits count commit groups: one per wgmma and per
    TMA store is what num_outstanding = n / pendings = n assume."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import create_function_from_signature

    from kernel_resources import resources

    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    fn, M, N, rows = post_res_proj_gluon, n * n + 2 * n, 64, []  # N = 64: divisible by 16, as 16384
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    print(f"triton {triton.__version__}, target cuda:90, n = {n}, BT = {BT}")
    print(f"{'C':>5} {'BC':>3} {'warps':>5} {'SX':>2} {'regs':>4} {'spill':>5} {'smem KB':>7} {'blk/SM':>6}  "
          f"commit groups in PTX, wgmma / TMA store ({n} each expected)")
    for C in Cs:
        for bc, w, sx in configs:
            x, f = torch.empty(N, n, C, dtype=torch.bfloat16), torch.empty(N, C, dtype=torch.bfloat16)
            phi_buf = torch.empty(n * C, 2 * p2(M), dtype=torch.bfloat16)
            _, args, kw, _ = fused_launch(x, f, torch.empty(N, n), torch.empty(N, n, n), phi_buf, M, bc, w, sx)
            kw = dict(kw, debug=False, instrumentation_mode="")
            bound, spec, options = binder(*args, **kw)
            options, sig, constexprs, attrs = fn._pack_args(backend, kw, bound, spec, options)
            k = triton.compile(GluonASTSource(fn, sig, constexprs, attrs), target=target, options=options.__dict__)
            r = dict(C=C, BC=bc, SX=sx, **resources(k), wgmma_commits=k.asm["ptx"].count("wgmma.commit_group"),
                     tma_store_commits=k.asm["ptx"].count("cp.async.bulk.commit_group"))
            rows.append(r)
            print(f"{C:5d} {bc:3d} {r['warps']:5d} {sx:2d} {r['regs']:4d} {r['spill_stack']:5d} {r['smem_kb']:7.1f} "
                  f"{r['blocks_per_sm']:6d}  {r['wgmma_commits']} / {r['tma_store_commits']}")
    return rows


def make_inputs(N, n, C, seed=0):
    g = torch.Generator().manual_seed(seed)
    M = n * n + 2 * n
    x = torch.randn(N, n, C, generator=g).bfloat16()
    f = torch.randn(N, C, generator=g).bfloat16()
    h_post = 2 * torch.sigmoid(torch.randn(N, n, generator=g))
    h_res = torch.softmax(torch.randn(N, n, n, generator=g), -1)
    phi = 0.02 * torch.randn(n * C, M, generator=g)
    return [t.cuda() for t in (x, f, h_post, h_res, phi)] + [M]


def check(L, configs) -> tuple[bool, list]:
    ok, rows = True, []
    for N, n, C in CHECK_SHAPES:
        x, f, hp, hr, phi, M = make_inputs(N, n, C)
        base = L.launch_post_res(x, f, hp, hr)
        bm, bss = L.launch_proj_fwd(base.view(N, n * C), phi, M, "bf16x2")
        rm, rss = reference_m_ss(base, phi)
        print(f"N {N:5d} n {n} C {C:4d}   post_res + proj_fwd: out {out_err(base, x, f, hp, hr):.2f}, "
              f"m {rel_err(bm, rm):.1e}, ss {rel_err(bss, rss):.1e}")
        phi_buf = L._phi_parts(phi, x, "bf16x2", p2(M))[0]
        for bc, w, sx in configs:
            r = dict(N=N, n=n, C=C, BC=bc, warps=w, SX=sx)
            try:  # a config that does not compile or launch is a FAIL; the others still report
                out, m, ss = post_res_proj(x, f, hp, hr, phi_buf, M, bc, w, sx)
                rm, rss = reference_m_ss(out, phi)  # m and Σx² of the stream this kernel wrote
                r.update(out_err=out_err(out, x, f, hp, hr), out_differ=int((out != base).sum()), m_err=rel_err(m, rm),
                         ss_err=rel_err(ss, rss))
                r["pass"] = r["out_err"] <= 1 and r["m_err"] <= 1e-4 and r["ss_err"] <= 1e-5
                said = (f"out {r['out_err']:.2f} of bound ({r['out_differ']} differ from post_res), m {r['m_err']:.1e}, "
                        f"ss {r['ss_err']:.1e}")
            except Exception as e:  # noqa: BLE001 - reported, and the run fails below
                r.update(error=f"{type(e).__name__}: {e}"[:500], **{"pass": False})
                said = r["error"].splitlines()[0][:200]
            ok &= r["pass"]
            rows.append(r)
            print(f"   gluon BC {bc:2d} warps {w} SX {sx}: {said}  {'PASS' if r['pass'] else 'FAIL'}")
    return ok, rows


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


def bench(L, configs, Cs, N, reps) -> list:
    n, rows = 4, []
    for C in Cs:
        x, f, hp, hr, phi, M = make_inputs(N, n, C)
        MP, post = p2(M), L.launch_post_res(x, f, hp, hr)
        unit, small = N * C * 2, N * (M + 1) * 4  # one [N, C] bf16 tensor; m and Σx²
        fused = (2 * n + 1) * unit + small  # x, f in; out, m, Σx² out (φ from L2, not counted)
        cases = [("copy x [N, n, C] (reference)", lambda: x.clone(), 2 * n * unit),
                 ("post_res", lambda: L.launch_post_res(x, f, hp, hr), (2 * n + 1) * unit),
                 ("proj_fwd (with phi_split)", lambda: L.launch_proj_fwd(post.view(N, n * C), phi, M, "bf16x2"),
                  n * unit + small),
                 ("post_res + proj_fwd (pair)", lambda: L.launch_proj_fwd(
                     L.launch_post_res(x, f, hp, hr).view(N, n * C), phi, M, "bf16x2"), fused + n * unit),
                 ("phi_split alone", lambda: L._phi_parts(phi, x, "bf16x2", MP), 0)]
        cases += [(f"gluon fused BC {bc} w {w} SX {sx} (with phi_split)", lambda bc=bc, w=w, sx=sx: post_res_proj(
            x, f, hp, hr, L._phi_parts(phi, x, "bf16x2", MP)[0], M, bc, w, sx), fused) for bc, w, sx in configs]
        res = {name: (time_us(fn, reps), nbytes) for name, fn, nbytes in cases}
        copy_gbps = res[cases[0][0]][1] / res[cases[0][0]][0] / 1e3
        pair = res[cases[3][0]][0]
        print(f"\nn {n}, C {C}, N {N}: median of {reps} calls")
        print(f"{'':52} {'µs':>8} {'MB':>7} {'GB/s':>6} {'% copy':>6} {'/ pair':>6}")
        for name, (us, nbytes) in res.items():
            gbps = nbytes / us / 1e3
            print(f"{name:52} {us:8.1f} {nbytes / 1e6:7.1f} {gbps:6.0f} {100 * gbps / copy_gbps:5.0f}% {us / pair:6.2f}")
            rows.append(dict(n=n, C=C, N=N, case=name, us=us, bytes=nbytes, gbps=gbps,
                             pct_copy=100 * gbps / copy_gbps, ratio_to_pair=us / pair))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compile-only", action="store_true", help="compile for sm_90 on CPU and print resources")
    ap.add_argument("--C", type=int, nargs="+", default=[2048, 2560, 4096])
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--reps", type=int, default=100)
    ap.add_argument("--configs", nargs="+", default=[",".join(map(str, c)) for c in CONFIGS], metavar="BC,WARPS,SX",
                    help="fused-kernel tiles: channel chunk, warps, x/f TMA stages (first: the default)")
    ap.add_argument("--out", default=None, help="JSON record (refused if the file exists)")
    args = ap.parse_args()
    configs = parse_configs(ap, args.configs)
    if any(c <= 0 or c % bc for c in args.C for bc, _, _ in configs):
        ap.error(f"--C {args.C}: each must be a positive multiple of every config's BC")
    if args.tokens <= 0 or args.reps < 50:
        ap.error("--tokens must be positive and --reps at least 50")
    from bench_io import claim_out, require_cuda, write_json

    claim_out(ap, args.out)
    if GLUON_ERROR is not None:
        raise SystemExit(f"gluon_post_res_proj.py: triton.experimental.gluon does not import ({GLUON_ERROR})")
    if args.compile_only:
        rows = compile_only(configs, args.C)
        if args.out:
            write_json(args.out, dict(mode="compile-only", rows=rows))
        sys.exit(1 if any(r["spill_stack"] for r in rows if (r["BC"], r["warps"], r["SX"]) == CONFIGS[0]) else 0)
    require_cuda("gluon_post_res_proj.py")
    import triton

    from mhc_repro.kernels import launch as L

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    except OSError:  # no git on the machine
        head = ""
    record = dict(torch=torch.__version__, triton=triton.__version__, commit=head or None,
                  device=torch.cuda.get_device_name(), tokens=args.tokens, reps=args.reps, configs=configs)
    with L.direct_launches():
        ok, record["checks"] = check(L, configs)
        if ok:
            record["rows"] = bench(L, configs, args.C, args.tokens, args.reps)
    if args.out:
        write_json(args.out, record)
    if not ok:
        raise SystemExit("FAIL: a fused result is off (above); nothing was timed")


if __name__ == "__main__":
    main()
