"""Can an SM partition (CUDA green contexts) hide mHC's memory-bound kernels behind the GEMMs?

Session 16 ran the weight-gradient GEMMs on a low-priority side stream (RESULTS.md run 68): the work
overlapped, but the memory-bound kernels beside the GEMMs slowed by about what the overlap hid, since
GEMM CTAs held the SMs. A green context gives each stream its own SMs. This probe times, in one
process, a GEMM chain (the FFN's two GEMMs on half a 16k-token batch) and a memory-bound chain (the
mHC post op's Triton kernel and an elementwise add on the same half batch):

- alone on the whole GPU, back to back (what a step does today);
- concurrently on two ordinary streams (session 16's overlap), and with the memory chain at high priority;
- on two disjoint green contexts of k and 132 − k SMs, each alone and both at once, for several k.

The figure that matters: the concurrent makespan against the sequential sum. Overlap pays only when
the makespan stays close to the GEMM chain alone on the whole GPU. Measured on the H200 (RESULTS.md
runs 124-125): at best 0.980-0.987 of the sequential sum, at the one split that suits the pair; the
green contexts a run makes live until the process ends (a probe, not a library).

    PYTHONPATH=. python benchmarks/green_ctx_probe.py --out probe.json
    python benchmarks/green_ctx_probe.py --summarize probe.json   # the overlap table, on any machine
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import time

import torch

CU_DEV_RESOURCE_TYPE_SM = 1
CU_GREEN_CTX_DEFAULT_STREAM = 1
CU_STREAM_NON_BLOCKING = 1
SM_COUNT_OFFSET = 96  # CUdevResource: type (4 bytes) + 92 bytes of padding, then CUdevSmResource.smCount


class _Resource(ctypes.Structure):
    # Larger than CUdevResource in any CUDA 12.4+ header: the driver writes only its own size.
    _fields_ = [("raw", ctypes.c_ubyte * 512)]

    def sm_count(self) -> int:
        return int.from_bytes(bytes(self.raw[SM_COUNT_OFFSET:SM_COUNT_OFFSET + 4]), "little")


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise RuntimeError(f"{what} failed with CUresult {rc}")


def split_green_streams(k: int) -> list[tuple[int, torch.cuda.ExternalStream]]:
    """Two green contexts on disjoint SMs (k, rest) from one split; a torch stream on each."""
    cu = ctypes.CDLL("libcuda.so.1")
    dev = ctypes.c_int()
    _check(cu.cuDeviceGet(ctypes.byref(dev), torch.cuda.current_device()), "cuDeviceGet")
    whole, group, rest = _Resource(), _Resource(), _Resource()
    _check(cu.cuDeviceGetDevResource(dev, ctypes.byref(whole), CU_DEV_RESOURCE_TYPE_SM), "cuDeviceGetDevResource")
    nb = ctypes.c_uint(1)
    _check(cu.cuDevSmResourceSplitByCount(ctypes.byref(group), ctypes.byref(nb), ctypes.byref(whole),
                                          ctypes.byref(rest), ctypes.c_uint(0), ctypes.c_uint(k)),
           f"cuDevSmResourceSplitByCount({k})")
    out = []
    for res in (group, rest):
        desc, green, stream = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_void_p()
        _check(cu.cuDevResourceGenerateDesc(ctypes.byref(desc), ctypes.byref(res), ctypes.c_uint(1)),
               "cuDevResourceGenerateDesc")
        _check(cu.cuGreenCtxCreate(ctypes.byref(green), desc, dev, ctypes.c_uint(CU_GREEN_CTX_DEFAULT_STREAM)),
               "cuGreenCtxCreate")
        _check(cu.cuGreenCtxStreamCreate(ctypes.byref(stream), green, ctypes.c_uint(CU_STREAM_NON_BLOCKING),
                                         ctypes.c_int(0)), "cuGreenCtxStreamCreate")
        out.append((res.sm_count(), torch.cuda.ExternalStream(stream.value)))
    return out


def make_work(tokens: int, c: int, n: int, ffn: int, gemm_iters: int, mem_iters: int, mem_scale: int = 1):
    """The two chains. ``mem_scale``: the memory chain runs on mem_scale × tokens rows, mem_iters ÷
    mem_scale times (the same bytes in fewer launches, so that the host's launch cost stays hidden)."""
    from mhc_repro.kernels import linked
    dev, bf = "cuda", torch.bfloat16
    x = torch.randn(tokens, c, device=dev, dtype=bf)
    w1 = torch.randn(c, ffn, device=dev, dtype=bf) / c ** 0.5
    w2 = torch.randn(ffn, c, device=dev, dtype=bf) / ffn ** 0.5
    rows = tokens * mem_scale
    xs = torch.randn(rows, n, c, device=dev, dtype=bf)
    f = torch.randn(rows, c, device=dev, dtype=bf)
    h_post = torch.rand(rows, n, device=dev)
    h_res = torch.rand(rows, n, n, device=dev)
    post = linked.mhc_post_res_linked

    def gemm():
        for _ in range(gemm_iters):
            (x @ w1) @ w2

    def mem():
        for _ in range(max(1, mem_iters // mem_scale)):
            y = post(xs, f, h_post, h_res)
            torch.add(y, xs)

    def post_once():  # the post op's output, to compare bits between streams
        return post(xs, f, h_post, h_res)
    return gemm, mem, post_once


def timed(fns_streams, reps: int) -> dict:
    """Median over reps of the makespan of running every (fn, stream) at once, and each one's span."""
    walls, spans = [], [[] for _ in fns_streams]
    for _ in range(reps):
        torch.cuda.synchronize()
        ev = []
        t0 = time.perf_counter()
        for fn, s in fns_streams:
            with torch.cuda.stream(s):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                ev.append((a, b))
        torch.cuda.synchronize()
        walls.append((time.perf_counter() - t0) * 1e3)
        for i, (a, b) in enumerate(ev):
            spans[i].append(a.elapsed_time(b))
    return {"wall_ms": statistics.median(walls), "span_ms": [statistics.median(s) for s in spans]}


def _alone(rows: dict, name: str) -> tuple[float, float]:
    """(GEMM, memory) chain times alone on the partitions a concurrent row ran on."""
    if name.startswith("two streams"):
        return rows["gemm alone (whole GPU)"]["span_ms"][0], rows["mem alone (whole GPU)"]["span_ms"][0]
    kg, km = name.split()[1], name.split()[3].rstrip(",")
    carve = [k for k in rows if k.startswith(f"gemm alone on {kg} SMs, carveout")]
    g = rows[carve[0] if name.endswith("carveout") and carve else f"gemm alone on {kg} SMs"]
    return g["span_ms"][0], rows[f"mem alone on {km} SMs"]["span_ms"][0]


def overlap_table(rows: dict) -> list[dict]:
    """Per concurrent row: makespan ÷ the pair back to back, and each chain's speed (its time alone on
    the whole GPU ÷ its span in the row). ``*_overlap``: the speeds while both ran, taking out the
    tail in which the later chain ran alone on its partition (at its alone-on-partition speed); their
    sum above 1 is the share of work an overlap can hide when the two are balanced."""
    seq = rows["sequential gemm then mem"]["wall_ms"]
    g1 = rows["gemm alone (whole GPU)"]["span_ms"][0]
    m1 = rows["mem alone (whole GPU)"]["span_ms"][0]
    out = []
    for name, r in rows.items():
        if "span_ms" not in r or len(r["span_ms"]) != 2:
            continue
        (sg, sm), (ag, am) = r["span_ms"], _alone(rows, name)
        t = min(sg, sm)  # both ran until then; then the later one alone on its partition
        wg = 1 - max(sg - t, 0) / ag  # share of each chain's work done while both ran
        wm = 1 - max(sm - t, 0) / am
        out.append({"row": name, "makespan_ms": r["wall_ms"], "vs_sequential": r["wall_ms"] / seq,
                    "gemm_speed": g1 / sg, "mem_speed": m1 / sm,
                    "gemm_overlap": wg * g1 / t, "mem_overlap": wm * m1 / t})
    return out


def summarize(path: str) -> None:
    """Print ``overlap_table`` of a saved run."""
    rows = json.load(open(path))["rows"]
    print(f"{path}: gemm alone {rows['gemm alone (whole GPU)']['span_ms'][0]:.2f} ms, mem alone "
          f"{rows['mem alone (whole GPU)']['span_ms'][0]:.2f} ms, back to back "
          f"{rows['sequential gemm then mem']['wall_ms']:.2f} ms (whole GPU)")
    print(f"{'row':38s} {'makespan':>9s} {'÷ seq':>7s} {'gemm speed':>11s} {'mem speed':>10s} "
          f"{'during overlap: gemm':>21s} {'mem':>6s} {'sum':>6s}")
    for r in overlap_table(rows):
        print(f"{r['row']:38s} {r['makespan_ms']:9.2f} {r['vs_sequential']:7.3f} {r['gemm_speed']:11.3f} "
              f"{r['mem_speed']:10.3f} {r['gemm_overlap']:21.3f} {r['mem_overlap']:6.3f} "
              f"{r['gemm_overlap'] + r['mem_overlap']:6.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=8192, help="half of the stack's 16k-token batch")
    ap.add_argument("--C", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=5632)
    ap.add_argument("--gemm-iters", type=int, default=30)
    ap.add_argument("--mem-iters", type=int, default=60)
    ap.add_argument("--mem-scale", type=int, default=1,
                    help="memory chain on this many times the tokens, this many times fewer calls")
    ap.add_argument("--ks", type=int, nargs="+", default=[16, 24, 32, 48, 64])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=None)
    ap.add_argument("--summarize", metavar="JSON", help="print the overlap table of a saved run and exit")
    args = ap.parse_args()
    if args.summarize:
        return summarize(args.summarize)

    torch.manual_seed(0)
    gemm, mem, post_once = make_work(args.tokens, args.C, 4, args.ffn, args.gemm_iters, args.mem_iters,
                                   args.mem_scale)
    main_s = torch.cuda.current_stream()
    s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
    s_hi = torch.cuda.Stream(priority=-1)  # above the default 0 (as in runs 124-125)
    for fn in (gemm, mem, gemm, mem):  # warm up: compile, cuBLAS heuristics, allocator
        fn()
    rows = {}

    def row(name, pairs):
        rows[name] = timed(pairs, args.reps)
        r = rows[name]
        print(f"{name:38s} wall {r['wall_ms']:8.2f} ms  spans " + " ".join(f"{v:8.2f}" for v in r["span_ms"]),
              flush=True)

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    print(f"{torch.cuda.get_device_name(0)} | {sms} SMs | torch {torch.__version__} | tokens {args.tokens} "
          f"C {args.C} ffn {args.ffn} gemm_iters {args.gemm_iters} mem_iters {args.mem_iters} "
          f"mem_scale {args.mem_scale}", flush=True)
    row("gemm alone (whole GPU)", [(gemm, main_s)])
    row("mem alone (whole GPU)", [(mem, main_s)])
    row("sequential gemm then mem", [(lambda: (gemm(), mem()), main_s)])
    row("two streams", [(gemm, s1), (mem, s2)])
    row("two streams, mem high priority", [(gemm, s1), (mem, s_hi)])
    ref = post_once()
    for k in args.ks:
        try:
            (k_m, sm_m), (k_g, sm_g) = split_green_streams(k)
        except Exception as e:  # noqa: BLE001  (report and go on: a probe)
            print(f"green split {k}: {e}", flush=True)
            rows[f"split {k}"] = {"error": str(e)}
            continue
        with torch.cuda.stream(sm_m):
            got = post_once()
        torch.cuda.synchronize()
        same = bool(torch.equal(got, ref))
        print(f"-- split {k}: mem partition {k_m} SMs, gemm partition {k_g} SMs; post op on the green "
              f"stream equals the default stream's: {same}", flush=True)
        for fn in (gemm, mem):
            with torch.cuda.stream(sm_g):
                fn()
            with torch.cuda.stream(sm_m):
                fn()
        row(f"gemm alone on {k_g} SMs", [(gemm, sm_g)])
        row(f"mem alone on {k_m} SMs", [(mem, sm_m)])
        row(f"concurrent {k_g} | {k_m}", [(gemm, sm_g), (mem, sm_m)])
        rows[f"split {k}"] = {"mem_sms": k_m, "gemm_sms": k_g, "same_bits": same}
        if hasattr(torch._C, "_set_sm_carveout_experimental"):
            torch._C._set_sm_carveout_experimental(sms - k_g)
            try:
                with torch.cuda.stream(sm_g):
                    gemm()
                row(f"gemm alone on {k_g} SMs, carveout {sms - k_g}", [(gemm, sm_g)])
                row(f"concurrent {k_g} | {k_m}, carveout", [(gemm, sm_g), (mem, sm_m)])
            finally:
                torch._C._set_sm_carveout_experimental(None)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"args": vars(args), "device": torch.cuda.get_device_name(0), "sms": sms,
                       "torch": torch.__version__, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
