"""The Gluon (Hopper) kernels probed by benchmarks/gluon_post_res_proj.py: mHC's post_res fused with the next
sub-layer's projection, the wgmma fed from the output tile in shared memory. Three variants: "base"
(one program per token tile), "persist" (programs walk token tiles, rings run on across them) and "ws"
(persist with 1-warp TMA loader partitions). The harness, configurations, references and timing are in
gluon_post_res_proj.py; the design notes are in its docstring and in reports/kernels/RESULTS.md
(session 26)."""

from __future__ import annotations

LOADER_REGS = 40  # registers of each 1-warp loader partition (setmaxnreg; the compute partition gets the rest)

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


# ---------------------------------------------------------------- variants "persist" and "ws"
# Shared by both: BT (64 or 128 tokens) comes from x_desc; φ's bf16 hi and lo halves land in separate
# [BC, MP] buffers (two TMA boxes of phi_buf's [n*C, 2*MP] rows), so the projection runs as two
# accumulators acc_h = out·φ_hi, acc_l = out·φ_lo of one layout and m = acc_h + acc_l needs no shared
# memory of its own. Each program walks token tiles pid, pid + nprog, ... and numbers its chunks
# g = it * nk + k over all of them: ring slot g % S, mbarrier phase (g // S) & 1, so the rings run on
# across tile boundaries (the next tile's first chunks load while this tile's last ones finish).
# Per chunk g, one CTA-wide barrier: form g's tiles (x ring slot g % SX -> out buffer g % 2); wait
# chunk g-1's MMAs and TMA stores (they ran under g's tile forming); fence + barrier; then slot g % SX
# and φ slot (g-1) % SP are free for their next loads, g's out tiles go out by TMA and g's MMAs are
# issued. Out buffer g % 2 was last read by chunk g-2, whose MMAs and stores chunk g-1 waited for.


@gluon.jit
def _coefs(hp_ptr, hr_ptr, rows, n: gl.constexpr, N):
    """h_post[rows, :] and h_res[rows, :, :] (fp32, one register per row and coefficient); rows >= N: 0."""
    tm = rows < N
    hp = ()
    for i in gl.static_range(n):
        hp = hp + (gl.load(hp_ptr + rows * n + i, mask=tm, other=0.0), )
    hr = ()
    for ij in gl.static_range(n * n):
        hr = hr + (gl.load(hr_ptr + rows * (n * n) + ij, mask=tm, other=0.0), )
    return hp, hr


@gluon.jit
def _chunk_at(g, pid, nprog, nk, BT: gl.constexpr, BC: gl.constexpr):
    """(first token, first channel) of a program's chunk g (tile g // nk of the program, chunk g % nk)."""
    return (pid + (g // nk) * nprog) * BT, (g % nk) * BC


@gluon.jit
def _load_phi2(ph_desc, ps, bar, slot, c0, C, n: gl.constexpr, MP: gl.constexpr):
    """φ rows [i*C + c0, +BC) of stream i: hi half (columns [0, MP)) to ps[slot*2n + i], lo to ps[slot*2n + n + i]."""
    mbarrier.expect(bar, 2 * n * ph_desc.block_type.nbytes)
    for i in gl.static_range(n):
        tma.async_copy_global_to_shared(ph_desc, [i * C + c0, 0], bar, ps.index(slot * 2 * n + i))
        tma.async_copy_global_to_shared(ph_desc, [i * C + c0, MP], bar, ps.index(slot * 2 * n + n + i))


@gluon.jit
def _form_chunk(xs, sx, os_, ob, hp, hr, ss, n: gl.constexpr, XL: gl.constexpr):
    """out tiles of one chunk from x/f ring slot sx into out buffer ob; returns ss plus their Σ out²."""
    xv = ()
    for j in gl.static_range(n):
        xv = xv + (xs.index(sx * (n + 1) + j).load(XL), )
    fv = xs.index(sx * (n + 1) + n).load(XL).to(gl.float32)
    for i in gl.static_range(n):
        # launch_post_res's order: Σ_j in j order, then h_post·f; fp32, rounded once (as the base kernel)
        o = gl.expand_dims(hr[i * n], 1) * xv[0].to(gl.float32)
        for j in gl.static_range(1, n):
            o = o + gl.expand_dims(hr[i * n + j], 1) * xv[j].to(gl.float32)
        o = o + gl.expand_dims(hp[i], 1) * fv
        r = o.to(gl.bfloat16)
        rf = r.to(gl.float32)
        ss = ss + gl.sum(rf * rf, axis=1)
        os_.index(ob * n + i).store(r)
    return ss


@gluon.jit
def _issue_mmas(os_, ob, ps, sp, acc_h, acc_l, n: gl.constexpr):
    for i in gl.static_range(n):
        acc_h = warpgroup_mma(os_.index(ob * n + i), ps.index(sp * 2 * n + i), acc_h, is_async=True)
        acc_l = warpgroup_mma(os_.index(ob * n + i), ps.index(sp * 2 * n + n + i), acc_l, is_async=True)
    # a no-op wait (2n groups may stay in flight) that hands the accumulators back as tensors for the
    # loop; the next chunk's wait(0) is the real one
    return warpgroup_mma_wait(num_outstanding=2 * n, deps=(acc_h, acc_l))


@gluon.jit
def _store_m_ss(acc_h, acc_l, ss, t0, m_ptr, ss_ptr, N, M, BT: gl.constexpr, MP: gl.constexpr,
                ACC: gl.constexpr, RL: gl.constexpr):
    mv = acc_h + acc_l  # φ_hi and φ_lo products, same layout: no shared memory round trip
    mr = t0 + gl.arange(0, BT, layout=gl.SliceLayout(1, ACC))
    mc = gl.arange(0, MP, layout=gl.SliceLayout(0, ACC))
    mmask = gl.expand_dims(mr < N, 1) & gl.expand_dims(mc < M, 0)
    gl.store(m_ptr + gl.expand_dims(mr, 1) * M + gl.expand_dims(mc, 0), mv, mask=mmask)
    rows = t0 + gl.arange(0, BT, layout=RL)
    gl.store(ss_ptr + rows, ss, mask=rows < N)


@gluon.jit
def post_res_proj_persist(x_desc, f_desc, ph_desc, out_desc, hp_ptr, hr_ptr, m_ptr, ss_ptr, N, C, M,
                          n: gl.constexpr, MP: gl.constexpr, SX: gl.constexpr, SP: gl.constexpr,
                          num_warps: gl.constexpr):
    """Persistent, not warp-specialized: the 4 or 8 warps load (one elected thread issues the TMA),
    form tiles, store and issue the MMAs."""
    BT: gl.constexpr = x_desc.block_type.shape[0]
    BC: gl.constexpr = x_desc.block_type.shape[1]
    TPR: gl.constexpr = BT // num_warps  # one token row per thread, as the base kernel
    XL: gl.constexpr = gl.BlockedLayout([1, 8], [TPR, 32 // TPR], [num_warps, 1], [1, 0])
    RL: gl.constexpr = gl.SliceLayout(1, XL)
    # every warp along tokens (BT >= 16 * num_warps: 64 x 4 or 128 x 4 / 8), each warpgroup its own rows
    ACC: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                  instr_shape=[16, MP, 16])
    pid = gl.program_id(0)
    nprog = gl.num_programs(0)
    my = (gl.cdiv(N, BT) - pid + nprog - 1) // nprog  # this program's tiles
    nk = C // BC
    G = my * nk  # this program's chunks

    xs = gl.allocate_shared_memory(gl.bfloat16, [SX * (n + 1), BT, BC], x_desc.layout)  # x_0..x_{n-1}, f
    ps = gl.allocate_shared_memory(gl.bfloat16, [SP * 2 * n, BC, MP], ph_desc.layout)  # φ_hi 0..n-1, φ_lo
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
        if s < G:
            t0, c0 = _chunk_at(s, pid, nprog, nk, BT, BC)
            _load_x(x_desc, f_desc, xs, xbar.index(s), s, t0, c0, C, n)
    for s in gl.static_range(SP):
        if s < G:
            _load_phi2(ph_desc, ps, pbar.index(s), s, (s % nk) * BC, C, n, MP)

    hp, hr = _coefs(hp_ptr, hr_ptr, pid * BT + gl.arange(0, BT, layout=RL), n, N)
    for it in range(my):
        t0 = (pid + it * nprog) * BT
        # the next tile's coefficients load under this tile's chunks
        hp_next, hr_next = _coefs(hp_ptr, hr_ptr, t0 + nprog * BT + gl.arange(0, BT, layout=RL), n, N)
        acc_h = gl.zeros([BT, MP], gl.float32, layout=ACC)
        acc_l = gl.zeros([BT, MP], gl.float32, layout=ACC)
        ss = gl.zeros([BT], gl.float32, layout=RL)
        for k in range(nk):
            g = it * nk + k
            c0 = k * BC
            sx = g % SX
            ob = g % 2
            mbarrier.wait(xbar.index(sx), (g // SX) & 1)
            ss = _form_chunk(xs, sx, os_, ob, hp, hr, ss, n, XL)
            acc_h, acc_l = warpgroup_mma_wait(num_outstanding=0, deps=(acc_h, acc_l))  # chunk g-1's MMAs
            tma.store_wait(pendings=0)  # chunk g-1's stores have read out buffer 1 - ob
            fence_async_shared()
            gl.thread_barrier()
            if g + SX < G:
                tn, cn = _chunk_at(g + SX, pid, nprog, nk, BT, BC)
                _load_x(x_desc, f_desc, xs, xbar.index(sx), sx, tn, cn, C, n)
            if g >= 1:
                if g - 1 + SP < G:
                    _load_phi2(ph_desc, ps, pbar.index((g - 1) % SP), (g - 1) % SP, ((g - 1 + SP) % nk) * BC, C,
                               n, MP)
            for i in gl.static_range(n):
                tma.async_copy_shared_to_global(out_desc, [t0, i * C + c0], os_.index(ob * n + i))
            sp = g % SP
            mbarrier.wait(pbar.index(sp), (g // SP) & 1)
            acc_h, acc_l = _issue_mmas(os_, ob, ps, sp, acc_h, acc_l, n)
        acc_h, acc_l = warpgroup_mma_wait(num_outstanding=0, deps=(acc_h, acc_l))
        _store_m_ss(acc_h, acc_l, ss, t0, m_ptr, ss_ptr, N, M, BT, MP, ACC, RL)
        hp = hp_next
        hr = hr_next
    tma.store_wait(pendings=0)


@gluon.jit
def _ws_x_loader(x_desc, f_desc, ph_desc, xs, ps, xready, xempty, pready, pempty, pid, nprog, G, nk, C):
    """Worker (1 warp): x and f of every chunk into the SX-slot ring, as far ahead as the slots allow.
    (Triton 3.6 hands a worker's constexpr arguments over as int32 scalars, so the sizes come from
    the shapes of the descriptors and buffers.)"""
    BT: gl.constexpr = x_desc.block_type.shape[0]
    BC: gl.constexpr = x_desc.block_type.shape[1]
    SX: gl.constexpr = xready.shape[0]
    n: gl.constexpr = xs.shape[0] // SX - 1
    for g in range(G):
        s = g % SX
        mbarrier.wait(xempty.index(s), ((g // SX) & 1) ^ 1)  # a fresh barrier passes parity 1 at once
        t0, c0 = _chunk_at(g, pid, nprog, nk, BT, BC)
        _load_x(x_desc, f_desc, xs, xready.index(s), s, t0, c0, C, n)


@gluon.jit
def _ws_phi_loader(x_desc, f_desc, ph_desc, xs, ps, xready, xempty, pready, pempty, pid, nprog, G, nk, C):
    """Worker (1 warp): φ's hi / lo slices of every chunk into the SP-slot ring (its own warp, so a
    shallow φ ring does not hold back the x ring)."""
    BC: gl.constexpr = x_desc.block_type.shape[1]
    MP: gl.constexpr = ph_desc.block_type.shape[1]
    SP: gl.constexpr = pready.shape[0]
    n: gl.constexpr = ps.shape[0] // (2 * SP)
    for g in range(G):
        s = g % SP
        mbarrier.wait(pempty.index(s), ((g // SP) & 1) ^ 1)
        _load_phi2(ph_desc, ps, pready.index(s), s, (g % nk) * BC, C, n, MP)


@gluon.jit
def _ws_compute(xs, ps, os_, xready, xempty, pready, pempty, out_desc, hp_ptr, hr_ptr, m_ptr, ss_ptr,
                pid, nprog, my, nk, N, C, M, n: gl.constexpr, MP: gl.constexpr, SX: gl.constexpr,
                SP: gl.constexpr, XL: gl.constexpr, ACC: gl.constexpr):
    """Default partition (the kernel's num_warps): the persistent variant's loop, with the TMA loads
    replaced by arrivals on the rings' empty barriers."""
    BT: gl.constexpr = out_desc.block_type.shape[0]
    BC: gl.constexpr = out_desc.block_type.shape[1]
    RL: gl.constexpr = gl.SliceLayout(1, XL)
    hp, hr = _coefs(hp_ptr, hr_ptr, pid * BT + gl.arange(0, BT, layout=RL), n, N)
    for it in range(my):
        t0 = (pid + it * nprog) * BT
        hp_next, hr_next = _coefs(hp_ptr, hr_ptr, t0 + nprog * BT + gl.arange(0, BT, layout=RL), n, N)
        acc_h = gl.zeros([BT, MP], gl.float32, layout=ACC)
        acc_l = gl.zeros([BT, MP], gl.float32, layout=ACC)
        ss = gl.zeros([BT], gl.float32, layout=RL)
        for k in range(nk):
            g = it * nk + k
            c0 = k * BC
            sx = g % SX
            ob = g % 2
            mbarrier.wait(xready.index(sx), (g // SX) & 1)
            ss = _form_chunk(xs, sx, os_, ob, hp, hr, ss, n, XL)
            acc_h, acc_l = warpgroup_mma_wait(num_outstanding=0, deps=(acc_h, acc_l))
            tma.store_wait(pendings=0)
            fence_async_shared()  # generic reads of slot sx before the loader's next TMA write to it
            gl.thread_barrier()  # every warp is past its reads of slot sx and its wait on chunk g-1's MMAs
            mbarrier.arrive(xempty.index(sx))
            if g >= 1:
                mbarrier.arrive(pempty.index((g - 1) % SP))  # chunk g-1's MMAs are done with its φ slot
            for i in gl.static_range(n):
                tma.async_copy_shared_to_global(out_desc, [t0, i * C + c0], os_.index(ob * n + i))
            sp = g % SP
            mbarrier.wait(pready.index(sp), (g // SP) & 1)
            acc_h, acc_l = _issue_mmas(os_, ob, ps, sp, acc_h, acc_l, n)
        acc_h, acc_l = warpgroup_mma_wait(num_outstanding=0, deps=(acc_h, acc_l))
        _store_m_ss(acc_h, acc_l, ss, t0, m_ptr, ss_ptr, N, M, BT, MP, ACC, RL)
        hp = hp_next
        hr = hr_next
    tma.store_wait(pendings=0)


@gluon.jit
def post_res_proj_ws(x_desc, f_desc, ph_desc, out_desc, hp_ptr, hr_ptr, m_ptr, ss_ptr, N, C, M,
                     n: gl.constexpr, MP: gl.constexpr, SX: gl.constexpr, SP: gl.constexpr,
                     LOADER_REGS: gl.constexpr, num_warps: gl.constexpr):
    """Warp-specialized and persistent: two 1-warp loader partitions (x/f ring, φ ring) run ahead
    of the default partition (num_warps warps), which forms the tiles, stores out and issues the MMAs."""
    BT: gl.constexpr = x_desc.block_type.shape[0]
    BC: gl.constexpr = x_desc.block_type.shape[1]
    TPR: gl.constexpr = BT // num_warps
    XL: gl.constexpr = gl.BlockedLayout([1, 8], [TPR, 32 // TPR], [num_warps, 1], [1, 0])
    ACC: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                  instr_shape=[16, MP, 16])
    pid = gl.program_id(0)
    nprog = gl.num_programs(0)
    my = (gl.cdiv(N, BT) - pid + nprog - 1) // nprog
    nk = C // BC
    G = my * nk

    xs = gl.allocate_shared_memory(gl.bfloat16, [SX * (n + 1), BT, BC], x_desc.layout)
    ps = gl.allocate_shared_memory(gl.bfloat16, [SP * 2 * n, BC, MP], ph_desc.layout)
    os_ = gl.allocate_shared_memory(gl.bfloat16, [2 * n, BT, BC], out_desc.layout)
    xready = gl.allocate_shared_memory(gl.int64, [SX, 1], mbarrier.MBarrierLayout())
    xempty = gl.allocate_shared_memory(gl.int64, [SX, 1], mbarrier.MBarrierLayout())
    pready = gl.allocate_shared_memory(gl.int64, [SP, 1], mbarrier.MBarrierLayout())
    pempty = gl.allocate_shared_memory(gl.int64, [SP, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(SX):
        mbarrier.init(xready.index(s), count=1)
        mbarrier.init(xempty.index(s), count=1)
    for s in gl.static_range(SP):
        mbarrier.init(pready.index(s), count=1)
        mbarrier.init(pempty.index(s), count=1)
    fence_async_shared()
    gl.thread_barrier()
    wargs = (x_desc, f_desc, ph_desc, xs, ps, xready, xempty, pready, pempty, pid, nprog, G, nk, C)
    gl.warp_specialize([
        (_ws_compute, (xs, ps, os_, xready, xempty, pready, pempty, out_desc, hp_ptr, hr_ptr, m_ptr, ss_ptr,
                       pid, nprog, my, nk, N, C, M, n, MP, SX, SP, XL, ACC)),
        (_ws_x_loader, wargs),
        (_ws_phi_loader, wargs),
    ], [1, 1], [LOADER_REGS, LOADER_REGS])


def p2(v: int, lo: int = 16) -> int:
    return max(lo, 1 << (v - 1).bit_length())  # launch._p2(M, 16): φ's padded width MP
