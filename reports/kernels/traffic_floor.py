"""Memory-traffic floors of the mHC sub-layer designs, against a measured benchmark run.

Counts HBM traffic per sub-layer in units of one [N, C] stream-dtype tensor (n = 4 streams), turns it
into time at the copy bandwidth measured in the run, and prints the stack ratio each design would reach
with every kernel at a given fraction of copy (the Sinkhorn kernels, latency-bound, at their measured
time). The residual's step time is the run's compiled residual. All of a design's traffic counts as
added time, although mHC replaces the residual's own add (≈ 3 units forward): the budgets printed
for the issue's targets are low by about that much.

    python reports/kernels/traffic_floor.py reports/kernels/run6_a893aaf_bench.json [--replaced 2048=1.135 ...]

``--replaced C=MS`` credits that conservatism where a profile measured it: MS is the residual's work
per step that mHC no longer runs (``profile_stack.py``'s "inductor" Δ, 1.135 ms at C = 2048 in run 82).
The designs already credit the branch norm (NORM_UNITS), so the extra credit per sub-layer is MS / the
sub-layers less that norm's time at copy speed; the credited ratios and budget print as a second line.
"""

from __future__ import annotations

import json
import sys

N_STREAMS = 4

# Units read + written per sub-layer (forward + backward), n = 4. See RESULTS.md for the derivation.
DESIGNS = {
    "three ops, dφ in the dx pass": {
        "proj_fwd": 4, "pre": 5, "post_res": 9, "post_res_bwd": 14, "pre_bwd_dh": 5, "proj_bwd": 8,
        "stream-gradient sum (Inductor)": 13},
    "three ops, dφ as a GEMM (sublayer_ops='three')": {
        "proj_fwd": 4, "pre": 5, "post_res": 9, "post_res_bwd": 14, "pre_bwd_dh": 5, "proj_bwd dx": 8,
        "dφ GEMM": 4, "stream-gradient sum (Inductor)": 13},
    "linked, reading g once (no dx write in post_res_bwd; not reached)": {
        "proj_fwd": 4, "pre": 5, "post_res": 9, "post_res_bwd_red (no dx)": 10, "pre_bwd_dh": 5,
        "proj_bwd + H_resᵀg + h_pre⊗d_in (one dx pass)": 13},
    "linked, LINK_MODE='add' (post_res_bwd writes H_resᵀg, the dx pass adds it; dφ GEMM: up to run 54)": {
        "proj_fwd": 4, "pre": 5, "post_res": 9, "post_res_bwd": 14, "pre_bwd_dh": 5,
        "dx pass (x, H_resᵀg, d_in, dx)": 13, "dφ GEMM": 4},
    # launch.PROJ_DX_TMA_DPHI: the dx pass forms dφ from the x tiles it reads anyway
    "linked 'add', dφ in the dx pass (the default of runs 55–57)": {
        "proj_fwd": 4, "pre": 5, "post_res": 9, "post_res_bwd": 14, "pre_bwd_dh": 5,
        "dx pass + dφ (x, H_resᵀg, d_in, dx)": 13},
    # residual.fuse_branch_norm (the default since session 12): pre writes RMSNorm(pre)·w, its backward
    # (x, dy in; dh out) replaces pre_bwd_dh, and the branch's own norm (≈ 2 units forward: h in, out;
    # 3 backward: dy, h in, dh out), which mHC ran on top of the residual's work, is no longer run.
    "linked 'add', dφ in the dx pass, branch RMSNorm in pre (default since session 12)": {
        "proj_fwd": 4, "pre_norm": 5, "post_res": 9, "post_res_bwd": 14, "pre_norm_bwd": 6,
        "dx pass + dφ (x, H_resᵀg, d_in, dx)": 13, "the branch's own norm, no longer run": -5},
    # Not implemented (the next step, RESULTS.md session 12). Backward order fixes what can be merged:
    # post's backward (g, x, f -> df, dH_res, dH_post) runs before the branch's, which turns df into
    # the norm's input gradient dy; only then can the norm's row sums (x, dy) run, then the Sinkhorn
    # backward (dm), then the dx pass (x again). So x is read three times in backward. What can go:
    # post_res_bwd's H_resᵀg write (4 units, and its read back) and the norm backward's dh write and
    # read back (1 + 1), if the dx pass owns all n streams of a channel chunk: it reads g once and forms
    # H_resᵀg, h and dh in registers (writes dx and per-split partials of dφ and dw).
    "fused norm + all-stream dx pass (g read once, dh never written; built, 20 % of copy, removed: run 62)": {
        "proj_fwd": 4, "pre_norm": 5, "post_res": 9, "post_res_bwd_red (g, x, f in; df out)": 10,
        "norm row sums (x, dy in)": 5, "all-stream dx pass (x, g, dy in; dx out)": 13,
        "the branch's own norm, no longer run": -5},
    # "gather" in the TMA dx pass (built in session 13, removed in 14; code at e3b8e35): the n programs
    # of a channel chunk launched together so that g comes from memory once (its other n − 1 reads hit
    # L2); post's backward only reduces. The norm's dh is still written and read back.
    "fused norm + 'gather' TMA pass, g from L2 n − 1 times (built, 51 % of copy, removed: run 66)": {
        "proj_fwd": 4, "pre_norm": 5, "post_res": 9, "post_res_bwd_red (g, x, f in; df out)": 10,
        "pre_norm_bwd": 6, "dx pass + dφ (x, g, d_in, dx)": 13, "the branch's own norm, no longer run": -5},
    "all-stream dx pass + projection and pre_norm in one forward pass (x re-read from L2; not implemented)": {
        "proj_fwd + pre_norm": 5, "post_res": 9, "post_res_bwd_red (g, x, f in; df out)": 10,
        "norm row sums (x, dy in)": 5, "all-stream dx pass (x, g, dy in; dx out)": 13,
        "the branch's own norm, no longer run": -5},
    "linked 'add' + the projection formed by the previous post op (built: kernel 3x slower, removed)": {
        "post_res + next proj": 9, "pre": 5, "post_res_bwd": 14, "pre_bwd_dh": 5,
        "dx pass (x, H_resᵀg, d_in, dx)": 13, "dφ GEMM": 4},
    # Not implemented: the dx pass of layer l also does layer l-1's post_res backward on the stream
    # gradient it has just formed (token-owning programs, so dH reductions stay in registers): the
    # 4-unit gradient between the two is neither written nor read back.
    "linked 'add' + cross-layer backward (dx pass of l does post_res_bwd of l-1; not implemented)": {
        "proj_fwd": 4, "pre": 5, "post_res": 9, "post_res_bwd without g (x, f in; H_resᵀg, df out)": 10,
        "pre_bwd_dh": 5, "dx pass without dx write (x, H_resᵀg, d_in)": 9, "dφ GEMM": 4},
    # Not built (session 15's model): on the default components, sub-layer l+1's dx pass also runs
    # sub-layer l's post backward, which needs nothing in between: its g (= dx of l+1) is formed in
    # registers and never written or read back (−8 units). Its programs must own all n streams of a
    # channel chunk (H_resᵀg and the dH_res products mix streams): the per-tile work that made the
    # all-stream "streams" pass lose (run 62). Per-token dH_res / dH_post leave as per-split partials.
    "fused norm + cross-layer backward (dx pass of l+1 runs post_res_bwd of l; not built)": {
        "proj_fwd": 4, "pre_norm": 5, "post_res": 9, "post_res_bwd inside the next dx pass (x, f in; H_resᵀg, df out)": 10,
        "pre_norm_bwd": 6, "dx pass + dφ without its dx write (x, H_resᵀg, d_in)": 9,
        "the branch's own norm, no longer run": -5},
    "fused norm + cross-layer backward and forward (post_res of l forms the projection of l+1; not built)": {
        "post_res + next proj": 9, "pre_norm": 5, "post_res_bwd inside the next dx pass (x, f in; H_resᵀg, df out)": 10,
        "pre_norm_bwd": 6, "dx pass + dφ without its dx write (x, H_resᵀg, d_in)": 9,
        "the branch's own norm, no longer run": -5},
    # Not built (session 31's model): the cross-layer backward the other way round. Sub-layer l's post
    # backward kernel finishes sub-layer l+1's dx on the fly: g_l = P_{l+1} + h_pre ⊗ dh_{l+1} +
    # dm_{l+1}·φ_{l+1}ᵀ + c_{l+1}·x_{l+1}, with x_{l+1} = H_res x_l + H_post f_l recomputed on chip from
    # the x_l and f_l it reads anyway (dφ_{l+1} += x_{l+1}ᵀ·dm_{l+1} from the same tile). Sub-layer
    # l+1's dx pass disappears and nothing reads x_{l+1} for it (the 38-unit design still does): the
    # stream crosses HBM only as P = H_resᵀg and dh. Programs own all n streams of a channel chunk
    # (H_res mixes them) and split the tokens (dφ accumulates in registers); dH_res / dH_post leave as
    # per-chunk partials (≈ 0.6 units at 128 channels per chunk, not counted). The first sub-layer's dx
    # needs one closing pass per stack (not counted).
    "fused norm + post_res_bwd of l finishing the dx of l+1, x_{l+1} recomputed (not built)": {
        "proj_fwd": 4, "pre_norm": 5, "post_res": 9,
        "post_res_bwd of l + dx of l+1 (P_{l+1}, dh_{l+1}, x_l, f_l in; P_l, df out)": 15,
        "pre_norm_bwd": 6, "the branch's own norm, no longer run": -5},
    "the same + the cross-layer forward (post_res of l forms the projection of l+1; not built)": {
        "post_res + next proj": 9, "pre_norm": 5,
        "post_res_bwd of l + dx of l+1 (P_{l+1}, dh_{l+1}, x_l, f_l in; P_l, df out)": 15,
        "pre_norm_bwd": 6, "the branch's own norm, no longer run": -5},
    "linked, LINK_MODE='gather' (g read n times, dφ GEMM)": {
        "proj_fwd": 4, "pre": 5, "post_res": 9, "post_res_bwd_red (no dx)": 10, "pre_bwd_dh": 5,
        "LINK dx pass (x, g ×n, d_in ×n, dx)": 28, "dφ GEMM": 4},
    "linked + fused forward (coefficients + pre, L2 re-read)": {
        "coefficients + pre": 5, "post_res": 9, "post_res_bwd_red (no dx)": 10, "pre_bwd_dh": 5,
        "proj_bwd + H_resᵀg + h_pre⊗d_in (one dx pass)": 13},
    # Not implemented: post_res of layer l fused with the projection of layer l+1 (x_{l+1} never
    # re-read for it), backward recomputing x_{l+1} from x_l and f_l instead of reading it.
    "cross-layer fused (not implemented)": {
        "post_res_l + proj_{l+1}": 9, "pre": 5, "backward pass 1 (reductions)": 6,
        "backward pass 2 (dx, df, dφ)": 15},
    # No design goes below this: each input read once, each output written once per sub-layer.
    # Forward reads x (n) and f (1), writes x_out (n) and the branch input (1); backward reads g (n),
    # x (n), f and d_in, writes dx (n) and df. It ignores that the coefficients' reductions over all of
    # C (dH from g·x, f and d_in) must finish before dx can be formed, which forces a second pass.
    "lower bound: every tensor moved once (no design reaches it)": {
        "forward (x, f in; x_out, branch input out)": 10, "backward (g, x, f, d_in in; dx, df out)": 15},
}
TARGETS = {2048: 1.10, 4096: 1.07}  # issue 6 (other C: none)
NORM_UNITS = 5  # the branch norm every fused-norm design credits ("the branch's own norm, no longer run")


def main(path: str, fractions=(1.0, 0.85, 0.7), replaced_ms: dict[int, float] | None = None) -> None:
    r = json.load(open(path))
    tokens = 16384
    copy = r["copy_gb_s"] * 1e9
    sink_us = {k["C"]: 0.0 for k in r["kernels"]}
    for k in r["kernels"]:
        if k["kernel"].strip().startswith(("coef_fwd", "coef_bwd")):
            sink_us[k["C"]] += 1e3 * k["ms"]
    print(f"{path}: copy {r['copy_gb_s']:.0f} GB/s; Sinkhorn kernels at their measured time")
    for s in r["stack"]:
        if s.get("variant") != "residual" or s.get("mode") != "compiled" or "ms" not in s:
            continue
        c, blocks = s["C"], s["blocks"]
        unit_us = 2 * tokens * c / copy * 1e6  # one bf16 [N, C] tensor
        sub = 2 * blocks
        print(f"\nC = {c}: residual {s['ms']:.2f} ms, {sub} sub-layers, one unit = {unit_us:.1f} µs")
        credits = [0.0]
        if replaced_ms and c in replaced_ms:  # µs per sub-layer beyond the norm the designs credit
            credits.append(replaced_ms[c] * 1e3 / sub - NORM_UNITS * unit_us)
            print(f"  credited: the residual's replaced work, {replaced_ms[c]:.3f} ms per step, is "
                  f"{credits[1]:.1f} µs per sub-layer beyond the branch norm's {NORM_UNITS} units")
        for name, parts in DESIGNS.items():
            units = sum(parts.values())
            for i, credit in enumerate(credits):
                ratios = []
                for f in fractions:
                    per_sub = units * unit_us / f + sink_us.get(c, 45.0) - credit
                    ratios.append(1 + sub * per_sub / 1e3 / s["ms"])
                cols = "  ".join(f"{100 * f:.0f}% copy: {x:.3f}x" for f, x in zip(fractions, ratios))
                label = f"{name:90s} {units:3d} units" if i == 0 else f"{'  credited':90s} {units:3d} units"
                print(f"  {label}   {cols}")
        if c in TARGETS:  # the traffic a design may move per sub-layer to reach the target
            t = TARGETS[c]
            for i, credit in enumerate(credits):
                budget = [((t - 1) * s["ms"] * 1e3 / sub - sink_us.get(c, 45.0) + credit) * f / unit_us
                          for f in fractions]
                cols = "  ".join(f"{100 * f:.0f}% copy: {u:.0f} units" for f, u in zip(fractions, budget))
                print(f"  target {t:.2f}x allows per sub-layer{' (credited)' if i else ''}: {cols}")


def _replaced(items: list[str]) -> dict[int, float]:
    """{C: ms} from ``--replaced`` items "C=MS"; a malformed item exits with a one-line error."""
    out = {}
    for item in items:
        c, _, ms = item.partition("=")
        try:
            out[int(c)] = float(ms)
        except ValueError:
            sys.exit(f"--replaced {item!r}: expected C=MS, e.g. 2048=1.135")
    return out


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="Memory-traffic floors of the mHC sub-layer designs.")
    ap.add_argument("runs", nargs="+", help="bench_mhc.py records (JSON)")
    ap.add_argument("--replaced", nargs="*", default=[], metavar="C=MS")
    args = ap.parse_args()
    for p in args.runs:
        main(p, replaced_ms=_replaced(args.replaced) or None)
