"""Probe of the cross-layer backward that recomputes the stream: sub-layer l's post backward finishes
sub-layer l+1's dx pass in the same kernel (``reports/kernels/traffic_floor.py``, the "finishing the
dx of l+1" designs; docs/kernels.md, "What the targets need").

Today (linked "add", the default) two kernels run per sub-layer pair: l+1's dx pass (x_{l+1}, P_{l+1},
dh_{l+1} in; dx_{l+1} out; dφ_{l+1} from the same tiles: 13 units of [N, C]) and l's post_res backward
(g_l = dx_{l+1}, x_l, f_l in; P_l = H_res,lᵀ g_l and df_l out; dH_res, dH_post: 14 units). This kernel
does both and moves 15: g_l is formed on chip,

    x_{l+1} = bf16(Σ_j H_res,l[i, j] x_l[j] + H_post,l[i] f_l)        (as post_res_fwd wrote it)
    g_l[i]  = bf16(c·x_{l+1}[i] + h_pre,l+1[i] dh_{l+1} + P_{l+1}[i] + dm·φ_{l+1,i}ᵀ)   (the dx pass)
    dφ_{l+1,i} += dmᵀ·x_{l+1}[i]

and never leaves it; x_{l+1} is recomputed from x_l and f_l, which the post backward reads anyway, so
nothing reads x_{l+1}. Programs own all n streams of a channel chunk (H_res mixes them) and a split
of the tokens: dφ accumulates in registers over the split (per-split partials, summed after), dH_res /
dH_post leave as per-chunk partials (summed after; no atomics anywhere). The stream mixing runs on the
CUDA cores (n² FMAs per element, as post_res_fwd), the dm·φᵀ and dmᵀ·x products as MMAs per stream.

Hypothesis: the pair's 27 units against 15 pay if the kernel stays near copy speed despite the
per-tile work that sank the all-stream dx pass of session 12 (20 % of copy). The issue's C = 2048
target needs the whole 34-unit design at ≈ 89 % of copy (traffic_floor_credited_run66_session31.txt).

    python benchmarks/xl_bwd_probe.py --out reports/kernels/runNNN_xl_bwd.json          (H200)

Prints, per C, the pair's and each config's device time (CUDA-graph replays), GB/s on the bytes each
moves (partials included) and % of a copy measured in the same run, after checking each config
against a float64 reference and against the pair. n = 4 and a bf16 stream ("bf16x2" φ) only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import triton
import triton.language as tl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from mhc_repro.kernels import launch  # noqa: E402
from mhc_repro.kernels.dx_kernels import _mma_acc  # noqa: E402

N_STREAMS = 4
# (BT tokens per tile, BC channels per program, programs per SM aimed at, warps, pipeline stages)
# Compiled for sm_90 (Triton 3.6, kernel_resources.compile_for_sm90) every one of these sits at 255
# registers and spills 240-2800 bytes: n x-tiles, n P accumulators and n dφ accumulators ([MP, BC]
# fp32 each) live at once; without the dφ MMAs the spill is ~16 bytes, without all MMAs and dH 164
# registers and none.
CONFIGS = ((16, 64, 2, 4, 2), (32, 64, 2, 8, 2), (16, 128, 2, 8, 2), (32, 64, 2, 8, 3), (16, 64, 4, 4, 1),
           (32, 32, 4, 4, 2), (64, 64, 1, 8, 2))
PRECISIONS = ("bf16x2", "bf16")
# --ablate: (label, ABL bits) on the two fastest tiles of run 131; "core" keeps the stream mixing, g, P_l
# and df (all 15 units move) and drops every MMA and reduction
ABLATIONS = (("full", 0), ("no dH", 1), ("no dphi", 2), ("no dm.phiT", 4), ("no MMA", 6), ("core", 7))
ABLATE_CONFIGS = ((32, 64, 2, 8, 2), (16, 64, 2, 4, 2))


@triton.jit
def xl_bwd(p1_ptr, dh1_ptr, hpre1_ptr, dm1_ptr, c1_ptr, phi_ptr, x_ptr, f_ptr, hp_ptr, hr_ptr,
           pout_ptr, df_ptr, dhp_ptr, dhr_ptr, dphi_ptr, N, C, M, tok_per_split, phi_ld, phi_lo,
           n: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, MP: tl.constexpr, LO: tl.constexpr,
           INTERP: tl.constexpr, STAGES: tl.constexpr, ABL: tl.constexpr = 0):
    # ABL (timing ablations, wrong results): bit 1 no dH reductions, 2 no dφ MMAs, 4 no dm·φᵀ MMAs
    ch = tl.program_id(0)
    sp = tl.program_id(1)
    c = ch * BC + tl.arange(0, BC)
    cm = c < C
    cols = tl.arange(0, MP)
    colm = cols < M
    t_lo = sp * tok_per_split
    t_hi = tl.minimum(t_lo + tok_per_split, N)
    dphi = ()
    for i in tl.static_range(n):
        dphi = dphi + (tl.zeros((MP, BC), dtype=tl.float32),)
    for t0 in tl.range(t_lo, t_hi, BT, num_stages=STAGES):
        t = t0 + tl.arange(0, BT)
        tm = t < t_hi
        msk = tm[:, None] & cm[None, :]
        t64 = t.to(tl.int64)
        so = t64[:, None] * C + c[None, :]
        f = tl.load(f_ptr + so, mask=msk, other=0.0).to(tl.float32)
        dh = tl.load(dh1_ptr + so, mask=msk, other=0.0).to(tl.float32)
        cc = tl.load(c1_ptr + t, mask=tm, other=0.0)
        dm = tl.load(dm1_ptr + t[:, None] * M + cols[None, :], mask=tm[:, None] & colm[None, :], other=0.0)
        dm_hi = dm.to(tl.bfloat16)
        dm_lo = (dm - dm_hi.to(tl.float32)).to(tl.bfloat16)
        xs = ()
        for j in tl.static_range(n):
            xs = xs + (tl.load(x_ptr + (t64[:, None] * n + j) * C + c[None, :], mask=msk, other=0.0).to(tl.float32),)
        pacc = ()
        for j in tl.static_range(n):
            pacc = pacc + (tl.zeros((BT, BC), dtype=tl.float32),)
        dfacc = tl.zeros((BT, BC), dtype=tl.float32)
        new_dphi = ()
        for i in tl.static_range(n):
            # x_{l+1}[i] in post_res_fwd's order: Σ_j over j, then + H_post f, rounded once
            xn = tl.zeros((BT, BC), dtype=tl.float32)
            for j in tl.static_range(n):
                xn += tl.load(hr_ptr + t * (n * n) + i * n + j, mask=tm, other=0.0)[:, None] * xs[j]
            hpi = tl.load(hp_ptr + t * n + i, mask=tm, other=0.0)
            xn += hpi[:, None] * f
            xn_b = xn.to(tl.bfloat16)
            # g_l[i] in the dx pass's order (ACC): c·x, + h_pre ⊗ d_in, + P, then the dm·φᵀ MMAs
            gi = cc[:, None] * xn_b.to(tl.float32)
            gi += tl.load(hpre1_ptr + t * n + i, mask=tm, other=0.0)[:, None] * dh
            gi += tl.load(p1_ptr + (t64[:, None] * n + i) * C + c[None, :], mask=msk, other=0.0).to(tl.float32)
            k = i * C + c
            pm = colm[:, None] & cm[None, :]
            pt = tl.load(phi_ptr + k[None, :] * phi_ld + cols[:, None], mask=pm, other=0.0)  # [MP, BC] φ_hiᵀ
            if not (ABL & 4):
                gi = _mma_acc(dm_hi, pt, gi, INTERP)
            if LO and not (ABL & 4):
                pt_lo = tl.load(phi_ptr + phi_lo + k[None, :] * phi_ld + cols[:, None], mask=pm, other=0.0)
                gi = _mma_acc(dm_lo, pt, gi, INTERP)
                gi = _mma_acc(dm_hi, pt_lo, gi, INTERP)
            gi = tl.where(msk, gi, 0.0).to(tl.bfloat16).to(tl.float32)  # the stream gradient's dtype
            # dφ_{l+1} (the dx pass's DPHI = 2 products: dm's bf16 parts times x_{l+1})
            d = dphi[i]
            if not (ABL & 2):
                d = _mma_acc(tl.trans(dm_hi), xn_b, d, INTERP)
                if LO:
                    d = _mma_acc(tl.trans(dm_lo), xn_b, d, INTERP)
            new_dphi = new_dphi + (d,)
            # sub-layer l's post backward on g_l[i]: P_l += H_res[i, :] g_i, df += H_post[i] g_i, dH rows
            nxt = ()
            for j in tl.static_range(n):
                hij = tl.load(hr_ptr + t * (n * n) + i * n + j, mask=tm, other=0.0)
                nxt = nxt + (pacc[j] + hij[:, None] * gi,)
                if not (ABL & 1):
                    tl.store(dhr_ptr + (ch.to(tl.int64) * N + t) * (n * n) + i * n + j, tl.sum(gi * xs[j], axis=1),
                             mask=tm)
            pacc = nxt
            dfacc += hpi[:, None] * gi
            if not (ABL & 1):
                tl.store(dhp_ptr + (ch.to(tl.int64) * N + t) * n + i, tl.sum(gi * f, axis=1), mask=tm)
        dphi = new_dphi
        for j in tl.static_range(n):
            tl.store(pout_ptr + (t64[:, None] * n + j) * C + c[None, :], pacc[j].to(pout_ptr.dtype.element_ty), mask=msk)
        tl.store(df_ptr + so, dfacc.to(df_ptr.dtype.element_ty), mask=msk)
    for i in tl.static_range(n):
        k = i * C + c
        tl.store(dphi_ptr + (sp.to(tl.int64) * n * C + k[None, :]) * M + cols[:, None], dphi[i],
                 mask=colm[:, None] & cm[None, :])


def launch_xl_bwd(p1, dh1, hpre1, dm1, c1, phi1, x, f, h_post, h_res, cfg=CONFIGS[0], precision="bf16x2",
                  abl: int = 0):
    """(P_l, df_l, dH_post,l, dH_res,l, dφ_{l+1}) of the fused kernel; shapes as ``reference``."""
    N, n, C = x.shape
    M = dm1.shape[1]
    MP = launch._p2(M, 16)
    bt, bc, per_sm, warps, stages = cfg
    p, ld, lo_off, _, lo = launch._phi_parts(phi1, x.view(N, n * C), precision, MP)
    chunks = launch._cdiv(C, bc)
    sms = launch._n_sm(x.device) if x.is_cuda else 4
    splits = max(1, min(launch._cdiv(N, bt), launch._cdiv(per_sm * sms, chunks)))
    tok = launch._cdiv(launch._cdiv(N, splits), bt) * bt
    splits = max(1, launch._cdiv(N, tok))
    f32 = dict(device=x.device, dtype=torch.float32)
    pout, df = torch.empty_like(x), torch.empty(N, C, device=x.device, dtype=x.dtype)
    dhp, dhr = torch.empty(chunks, N, n, **f32), torch.empty(chunks, N, n, n, **f32)
    dphi = torch.empty(splits, n * C, M, **f32)
    xl_bwd[(chunks, splits)](
        p1, dh1, hpre1, dm1, c1, p, x, f, h_post, h_res, pout, df, dhp, dhr, dphi, N, C, M, tok, ld, lo_off,
        n=n, BT=bt, BC=bc, MP=MP, LO=lo, INTERP=launch._interpreted(), STAGES=stages, ABL=abl, num_warps=warps)
    return pout, df, dhp.sum(0), dhr.sum(0), dphi.sum(0)


def launch_pair(p1, dh1, hpre1, dm1, c1, phi1, x, f, h_post, h_res, xn, precision="bf16x2"):
    """The same outputs from today's kernels: l+1's linked dx pass ("add", dφ in the pass) on the
    stored x_{l+1} = ``xn``, then l's post_res backward on its dx."""
    N, n, C = x.shape
    dx, dphi = launch.launch_proj_bwd(xn.view(N, n * C), phi1, dm1, c1, precision, link=(p1, h_res, hpre1, dh1),
                                      link_mode="add")
    pout, df, dhp, dhr = launch.launch_post_res_bwd(x, f, h_post, h_res, dx.view(N, n, C), write_dx=True)
    return pout, df, dhp, dhr, dphi


def reference(p1, dh1, hpre1, dm1, c1, phi1, x, f, h_post, h_res):
    """float64 from the same inputs; x_{l+1} rounded to the stream dtype as the forward stored it, g_l
    not rounded. Returns (P_l [N, n, C], df_l [N, C], dH_post [N, n], dH_res [N, n, n], dφ [nC, M])."""
    d = torch.float64
    x64, f64 = x.to(d), f.to(d)
    xn = (torch.einsum("tij,tjc->tic", h_res.to(d), x64) + h_post.to(d)[:, :, None] * f64[:, None])
    xn = xn.to(x.dtype).to(d)
    N, n, C = x.shape
    g = (c1.to(d)[:, None, None] * xn + hpre1.to(d)[:, :, None] * dh1.to(d)[:, None] + p1.to(d)
         + (dm1.to(d) @ phi1.to(d).t()).view(N, n, C))
    pout = torch.einsum("tij,tic->tjc", h_res.to(d), g)
    df = torch.einsum("ti,tic->tc", h_post.to(d), g)
    dhr = torch.einsum("tic,tjc->tij", g, x64)
    dhp = torch.einsum("tic,tc->ti", g, f64)
    dphi = xn.reshape(N, n * C).t() @ dm1.to(d)
    return pout, df, dhp, dhr, dphi


def random_inputs(N: int, C: int, device, n: int = N_STREAMS, M: int | None = None, seed: int = 0):
    """Inputs of the magnitudes the model sees: H_res doubly stochastic-like rows, gates in (0, 2)."""
    M = n * n + 2 * n if M is None else M
    g = torch.Generator(device="cpu").manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g).to(device)

    bf = torch.bfloat16
    x, f = r(N, n, C).to(bf), r(N, C).to(bf)
    h_res = torch.softmax(2 * r(N, n, n), -1)
    h_post = 2 * torch.sigmoid(r(N, n))
    hpre1 = torch.sigmoid(r(N, n))
    p1, dh1 = (0.1 * r(N, n, C)).to(bf), (0.1 * r(N, C)).to(bf)
    dm1, c1 = 0.05 * r(N, M), 0.05 * r(N)
    phi1 = r(n * C, M) / M ** 0.5  # dm·φᵀ then as large as the other terms of g (≈ 0.05 each)
    return p1, dh1, hpre1, dm1, c1, phi1, x, f, h_post, h_res


def compare(out, ref) -> dict:
    """Relative errors (Frobenius and max-abs over max |ref|) per output."""
    names = ("P", "df", "dH_post", "dH_res", "dphi")
    res = {}
    for name, o, r_ in zip(names, out, ref):
        o, r_ = o.double(), r_.double()
        scale = r_.abs().max().clamp_min(1e-30)
        res[name] = dict(rel_fro=float((o - r_).norm() / r_.norm().clamp_min(1e-30)),
                         rel_max=float((o - r_).abs().max() / scale))
    return res


def within(errs: dict, fro: float = 1e-2, mx: float = 3e-2) -> bool:
    """Against the float64 reference: g and the outputs are rounded to bf16 (≈ 3e-3 relative rms
    each; measured 4-6e-3 in all, the pair alike), while a term of g left out or misplaced is ≈ 0.3
    of it. Against the pair pass fro=1e-3, mx=1e-2: the two differ where g's bf16 rounding does."""
    return all(e["rel_fro"] <= fro and e["rel_max"] <= mx for e in errs.values())


def ablate(a, rec, save, gpu_time) -> None:
    """Timing rows of ABLATIONS (results not checked: the pieces left out are wrong by design)."""
    copy = rec["copy_gb_s"]
    ins = random_inputs(a.N, 2048, torch.device("cuda"), seed=1)
    xn = launch.launch_post_res(*ins[6:])
    for prec in a.precision:
        ms = gpu_time(lambda: launch_pair(*ins, xn, precision=prec))
        rec["rows"].append(dict(C=2048, precision=prec, kernel="pair", ms=ms))
        print(f"C=2048 {prec} pair: {1e3 * ms:.1f} µs", flush=True)
        for cfg in ABLATE_CONFIGS:
            for label, bits in ABLATIONS:
                ms_a = gpu_time(lambda: launch_xl_bwd(*ins, cfg=cfg, precision=prec, abl=bits))
                gbs = 15 * a.N * 2048 * 2 / ms_a / 1e6
                rec["rows"].append(dict(C=2048, precision=prec, kernel=f"xl_bwd {cfg} [ablation] {label}", cfg=cfg,
                                        abl=bits, ms=ms_a, vs_pair=ms_a / ms, frac_copy_15_units=gbs / copy))
                print(f"C=2048 {prec} xl_bwd {cfg} [ablation] {label:10s}: {1e3 * ms_a:7.1f} µs "
                      f"({ms_a / ms:.2f}x the pair; 15 units at {100 * gbs / copy:.0f} % of copy)", flush=True)
            save()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--C", type=int, nargs="+", default=[2048, 4096])
    ap.add_argument("--N", type=int, default=16384)
    ap.add_argument("--check-N", type=int, default=4000,
                    help="tokens of the float64 check (a multiple of 16: the same compiled kernels as the timed "
                         "N; odd token counts are the CPU tests')")
    ap.add_argument("--precision", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    ap.add_argument("--ablate", action="store_true",
                    help="time ABLATIONS at C 2048 instead (pieces of the work left out; results wrong, unchecked)")
    ap.add_argument("--out", help="JSON record (refused if it exists)")
    a = ap.parse_args(argv)
    if a.out and os.path.exists(a.out):
        sys.exit(f"--out {a.out} exists; nothing is overwritten")
    if not torch.cuda.is_available():
        sys.exit("xl_bwd_probe.py times kernels on a CUDA device; none is available (CPU coverage: "
                 "tests/kernels/test_xl_bwd_probe.py)")
    from kernel_bench import copy_bandwidth, gpu_time, machine_probe

    dev = torch.device("cuda")
    rec = dict(probe="xl_bwd", machine=machine_probe(dev), copy_gb_s=copy_bandwidth(dev), rows=[], checks=[])
    copy = rec["copy_gb_s"]
    print(f"copy {copy:.0f} GB/s; {torch.cuda.get_device_name()}", flush=True)

    def save():
        if a.out:
            with open(a.out + ".tmp", "w") as fh:
                json.dump(rec, fh, indent=1)
            os.replace(a.out + ".tmp", a.out)

    if a.ablate:
        with launch.direct_launches():
            ablate(a, rec, save, gpu_time)
        return 0
    ok_cfgs = []
    with launch.direct_launches():
        for prec in a.precision:  # correctness first: float64 at C 2048 and 1920 (a partial last chunk at BC 128)
            for cfg in CONFIGS:
                good = True
                for C in (2048, 1920):
                    ins = random_inputs(a.check_N, C, dev, seed=C)
                    try:
                        errs = compare(launch_xl_bwd(*ins, cfg=cfg, precision=prec), reference(*ins))
                    except Exception as e:  # out of resources etc.: that config's FAIL
                        errs, good = {"error": repr(e)[:300]}, False
                    else:
                        good &= within(errs)
                    rec["checks"].append(dict(cfg=cfg, precision=prec, C=C, N=a.check_N, errs=errs))
                    print(f"check {prec} {cfg} C={C}: {'ok' if good else 'FAIL'} {errs}", flush=True)
                if good:
                    ok_cfgs.append((prec, cfg))
            save()
        for C in a.C:
            ins = random_inputs(a.N, C, dev, seed=1)
            xn = launch.launch_post_res(*ins[6:])
            ref = reference(*ins)
            unit = a.N * C * 2
            for prec in a.precision:
                pair = launch_pair(*ins, xn, precision=prec)
                rec["checks"].append(dict(cfg="pair", precision=prec, C=C, N=a.N, errs=compare(pair, ref)))
                ms = gpu_time(lambda: launch_pair(*ins, xn, precision=prec))
                gbs = 27 * unit / ms / 1e6
                rec["rows"].append(dict(C=C, precision=prec, kernel="pair (dx pass of l+1 + post_res_bwd of l)",
                                        ms=ms, gb_s=gbs, frac_copy=gbs / copy, units=27))
                print(f"C={C} {prec} pair: {1e3 * ms:.1f} µs, {gbs:.0f} GB/s, {100 * gbs / copy:.0f} % of copy",
                      flush=True)
                for p_, cfg in ok_cfgs:
                    if p_ != prec:
                        continue
                    errs = compare(launch_xl_bwd(*ins, cfg=cfg, precision=prec), pair)
                    ms_f = gpu_time(lambda: launch_xl_bwd(*ins, cfg=cfg, precision=prec))
                    chunks = launch._cdiv(C, cfg[1])
                    by = 15 * unit + 2 * chunks * a.N * (N_STREAMS ** 2 + N_STREAMS) * 4  # + dH partials, out and back
                    gbs = by / ms_f / 1e6
                    row = dict(C=C, precision=prec, kernel=f"xl_bwd {cfg}", cfg=cfg, ms=ms_f, gb_s=gbs,
                               frac_copy=gbs / copy, units=by / unit, vs_pair=ms_f / ms, errs_vs_pair=errs,
                               ok_vs_pair=within(errs, 1e-3, 1e-2))
                    rec["rows"].append(row)
                    print(f"C={C} {prec} xl_bwd {cfg}: {1e3 * ms_f:.1f} µs ({ms_f / ms:.3f}x the pair), "
                          f"{gbs:.0f} GB/s, {100 * gbs / copy:.0f} % of copy; vs pair "
                          f"{'ok' if row['ok_vs_pair'] else 'DIFF'} {errs}", flush=True)
                del pair
            del ins, ref, xn
            torch.cuda.empty_cache()
            save()
    rec["machine_end"] = machine_probe(dev)
    save()
    return 0 if ok_cfgs else 1


if __name__ == "__main__":
    sys.exit(main())
