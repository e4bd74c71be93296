"""Evaluation throughput of the lm-eval wrapper's batching core (mhc_repro.evaluation.engine).

Measures, per residual variant of a preset (random weights: throughput does not depend on them):
  * loglikelihood tokens/s: multiple-choice-like requests (contexts of varied length + short
    continuations), length-sorted, right-padded batches; counts real input tokens.
  * generation tokens/s: batched greedy decoding with the KV cache (left-padded prompts, no stop
    string, so every row generates max_gen_toks); counts generated tokens; prefill included, and
    also reported on its own.
No lm-eval / mlflow import, so it runs on the GPU image. Example:

    python3 benchmarks/eval_throughput.py --preset 3b --device cuda --out out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mhc_repro.evaluation.engine import Engine  # noqa: E402
from mhc_repro.model.transformer import LM  # noqa: E402
from mhc_repro.presets import get_preset, with_variant  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _requests(n: int, ctx_min: int, ctx_max: int, cont: int, vocab: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(ctx_min, ctx_max + 1, (n,), generator=g).tolist()
    return [(torch.randint(1, vocab, (L,), generator=g).tolist(),
             torch.randint(1, vocab, (cont,), generator=g).tolist()) for L in lens]


def bench_variant(args, variant: str, device: torch.device) -> dict:
    cfg = get_preset(args.preset)
    if variant != "residual":
        cfg = with_variant(cfg, variant)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(device):  # initialise on the device: a 3B model built on the host takes minutes
        model = LM(cfg).eval()
    _sync(device)
    build_s = time.perf_counter() - t0
    eng = Engine(model, eot_token_id=0, pad_token_id=0, max_length=cfg.max_seq_len,
                 batch_size=args.batch_size, device=device, bf16=not args.fp32)
    out = {"variant": variant, "params_total": sum(p.numel() for p in model.parameters()),
           "build_s": round(build_s, 2), "residual_backend": getattr(cfg.residual, "backend", None)}

    # Warm-up (Triton JIT, cuBLAS heuristics, allocator) on small shapes of both paths.
    eng.loglikelihood(_requests(args.batch_size, 32, 64, 4, cfg.vocab_size, 1))
    eng.generate([r[0] for r in _requests(args.gen_batch, 32, 64, 1, cfg.vocab_size, 2)], max_gen_toks=4)
    _sync(device)

    # Sanity: batched, padded scores against one unpadded forward per request (same autocast).
    check = _requests(4, 64, 256, 4, cfg.vocab_size, 5)
    diffs = []
    for (ctx, cont), (score, _) in zip(check, eng.loglikelihood(check)):
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=eng.bf16 and device.type == "cuda"):
            logits = model(torch.tensor([ctx + cont[:-1]], device=device))[0, -len(cont):].float()
        ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(cont, device=device)[:, None]).sum().item()
        diffs.append(abs(score - ref))
    out["check_loglik_max_abs_diff_vs_unpadded"] = max(diffs)

    reqs = _requests(args.ll_requests, args.ctx_min, args.ctx_max, args.cont_len, cfg.vocab_size, 3)
    real = sum(len(c) + len(t) - 1 for c, t in reqs)
    t0 = time.perf_counter()
    eng.loglikelihood(reqs)
    _sync(device)
    dt = time.perf_counter() - t0
    out["loglikelihood"] = {"requests": len(reqs), "input_tokens": real, "seconds": round(dt, 3),
                            "tokens_per_s": round(real / dt, 1), "requests_per_s": round(len(reqs) / dt, 2)}

    gen_eng = Engine(model, eot_token_id=-1, pad_token_id=0, max_length=cfg.max_seq_len,
                     batch_size=args.gen_batch, device=device, bf16=not args.fp32)
    prompts = [r[0] for r in _requests(args.gen_batch, args.prompt_min, args.prompt_max, 1, cfg.vocab_size, 4)]
    t0 = time.perf_counter()
    gen_eng.generate(prompts, max_gen_toks=1)  # prefill (+1 token) alone
    _sync(device)
    prefill = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    gens = gen_eng.generate(prompts, max_gen_toks=args.gen_tokens)
    _sync(device)
    dt = time.perf_counter() - t0
    n_gen = sum(len(g.tokens) for g in gens)
    out["generation"] = {
        "batch": len(prompts), "prompt_tokens": sum(map(len, prompts)), "max_gen_toks": args.gen_tokens,
        "generated_tokens": n_gen, "seconds": round(dt, 3), "tokens_per_s": round(n_gen / dt, 1),
        "prefill_seconds": round(prefill, 3),
        "decode_tokens_per_s_excl_prefill": round((n_gen - len(prompts)) / max(dt - prefill, 1e-9), 1),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None}
    del model, eng, gen_eng
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="3b")
    p.add_argument("--variants", nargs="+", default=["residual", "mhc", "hc"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=16, help="loglikelihood sequences per forward")
    p.add_argument("--ll-requests", type=int, default=64)
    p.add_argument("--ctx-min", type=int, default=256)
    p.add_argument("--ctx-max", type=int, default=1024)
    p.add_argument("--cont-len", type=int, default=8)
    p.add_argument("--gen-batch", type=int, default=32)
    p.add_argument("--prompt-min", type=int, default=256)
    p.add_argument("--prompt-max", type=int, default=768)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--time-budget", type=float, default=1e9, help="skip remaining variants after this many s")
    p.add_argument("--commit", default="unknown")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    record = {"benchmark": "eval_throughput", "commit": args.commit, "preset": args.preset,
              "command": " ".join(["python3", "benchmarks/eval_throughput.py"] + (argv or sys.argv[1:])),
              "torch": torch.__version__, "python": platform.python_version(),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
              "bf16_autocast": device.type == "cuda" and not args.fp32, "settings": vars(args) | {"out": str(args.out)},
              "results": [], "skipped": []}
    start = time.perf_counter()
    for v in args.variants:
        if time.perf_counter() - start > args.time_budget:
            record["skipped"].append(v)
            continue
        try:
            res = bench_variant(args, v, device)
        except Exception as err:  # record and go on: one variant failing must not lose the others
            res = {"variant": v, "error": f"{type(err).__name__}: {err}"}
        print(json.dumps(res), flush=True)
        record["results"].append(res)
        if args.out:
            args.out.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
