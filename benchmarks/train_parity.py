"""Loss curves of a small mHC LM trained with the fused Triton kernels vs the reference ops.

Same seed, same init, same batches; only ``residual.backend`` (and the kernels' projection
precision) differs. Without CUDA it runs the kernels through the Triton interpreter on CPU (fp32), so
the two curves should agree to float rounding that grows slowly with training (chaotic divergence).

On CUDA, ``--dtypes fp32 bf16-mixed bf16-true`` trains each backend in each precision: fp32; autocast
bf16 with fp32 weights (the training recipe's "bf16-mixed": the stream stays fp32, the kernels use
tf32 projections); and bf16 weights and stream ("bf16-true": the kernels' bf16 path, with both
projection precisions). "bf16 noise" is measured in the same run: the gap between the reference in
fp32 and the reference in bf16, which the fused-vs-reference gap is compared with. ``--perturb-init
EPS`` adds a second measure, "chaos": the reference trained again in the same precision with every
initial weight scaled by (1 + EPS·z), z ~ N(0, 1) (EPS = 2**-9: about one bf16 rounding), i.e. how far
two runs that differ only at rounding level drift apart — the fair yardstick for two bf16 runs.

    PYTHONPATH=. python benchmarks/train_parity.py --steps 200 --out reports/kernels/train_parity.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are imported
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mhc_repro.data.synthetic import bigram_batches  # noqa: E402
from mhc_repro.model.transformer import LM  # noqa: E402
from mhc_repro.presets import get_preset, with_variant  # noqa: E402


def perturb_(model: torch.nn.Module, eps: float, seed: int) -> None:
    """Scale every parameter element by (1 + eps·z), z ~ N(0, 1) from one seeded CPU generator (the same
    draws on every device), then round back to the parameter's dtype."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            z = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.device)
            p.copy_(p.float() * (1 + eps * z))


def train(backend: str, args, device, dtype: str = "fp32", precision: str = "bf16x2",
          perturb: float = 0.0) -> list[float]:
    base = get_preset("tiny")
    cfg = dataclasses.replace(base, vocab_size=args.vocab, d_model=args.d_model, n_blocks=args.blocks,
                              max_seq_len=args.seq, dense_ffn_width=2 * args.d_model,
                              attention=dataclasses.replace(base.attention, n_heads=2, head_dim=args.d_model // 2))
    cfg = with_variant(cfg, "mhc", n=args.n, backend=backend, kernel_precision=precision,
                       sublayer_ops=args.sublayer_ops,
                       **({} if args.fuse_branch_norm is None else dict(fuse_branch_norm=args.fuse_branch_norm)))
    torch.manual_seed(args.seed)
    model = LM(cfg.validate()).to(device)
    if dtype == "bf16-true":
        model = model.to(torch.bfloat16)
    if perturb:
        perturb_(model, perturb, args.seed + 2)
    opt = torch.optim.AdamW(model.param_groups(0.1), lr=args.lr, betas=(0.9, 0.95))
    losses = []
    for tok in bigram_batches(args.vocab, args.batch, args.seq, args.steps, args.seed + 1):
        tok = tok.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16-mixed"):
            logits = model(tok[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                                 tok[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--vocab", type=int, default=64)
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtypes", nargs="+", default=["fp32"], choices=["fp32", "bf16-mixed", "bf16-true"])
    ap.add_argument("--sublayer-ops", default="linked", choices=["linked", "three"],
                    help="residual.sublayer_ops of both backends (the reference has the same two forms)")
    ap.add_argument("--fuse-branch-norm", action=argparse.BooleanOptionalAction, default=None,
                    help="residual.fuse_branch_norm of both backends: the branch's RMSNorm inside mHC's pre "
                         "(the kernels' pre_norm; the reference's F.rms_norm on pre's output); default: the config's")
    ap.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                    help="set mhc_repro.kernels.launch constants first (as bench_mhc.py --set), e.g. PROJ_DX_TMA_ACC=False")
    ap.add_argument("--backends", nargs="+", default=["reference", "triton"], choices=["reference", "triton"],
                    help="which backends to train (the gaps need the reference)")
    ap.add_argument("--perturb-init", type=float, default=0.0, metavar="EPS",
                    help="also train the reference with its initial weights scaled by (1 + EPS·N(0, 1)), "
                         "per dtype: the 'chaos' gap (e.g. 0.001953125 = 2**-9)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_io import claim_out, write_json

    claim_out(ap, args.out)
    if args.perturb_init < 0:
        raise SystemExit(f"--perturb-init {args.perturb_init}: must be >= 0")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    res = dict(args=vars(args), device=str(device), interpreter=os.environ.get("TRITON_INTERPRET") == "1",
               gpu=torch.cuda.get_device_name() if device.type == "cuda" else None, curves={})
    if args.set:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from stack_variants import launch_settings

        res["launch"] = launch_settings(args.set)  # the fused runs only: the reference never reads them
    runs = [(d, b, "bf16x2", 0.0) for b in args.backends for d in args.dtypes]
    runs += [("bf16-true", "triton", "bf16", 0.0)] if "bf16-true" in args.dtypes and "triton" in args.backends else []
    runs += [(d, "reference", "bf16x2", args.perturb_init) for d in args.dtypes] if args.perturb_init else []
    for dtype, backend, prec, eps in runs:
        key = f"{dtype}/{backend}" + (f"/{prec}" if dtype == "bf16-true" and backend == "triton" else "")
        key += "-perturbed" if eps else ""
        t0 = time.time()
        res["curves"][key] = losses = train(backend, args, device, dtype, prec, eps)
        res.setdefault("seconds", {})[key] = time.time() - t0
        print(f"{key:28s} {time.time() - t0:5.0f}s  loss {losses[0]:.4f} -> {losses[-1]:.4f}", flush=True)
    cur = res["curves"]

    def gap(a: str, b: str) -> dict:
        d = [abs(u - v) for u, v in zip(cur[a], cur[b])]
        head, tail = d[:len(d) // 2] or d, d[len(d) // 2:]
        return dict(max=max(d), final=d[-1], mean_first_half=sum(head) / len(head),
                    mean_second_half=sum(tail) / len(tail))

    res["gaps"] = gaps = {}
    for dtype in args.dtypes:
        if f"{dtype}/reference" not in cur:
            continue
        for key in [k for k in cur if k.startswith(dtype + "/triton")]:
            gaps[f"{key} vs {dtype}/reference"] = gap(key, f"{dtype}/reference")
        if dtype != "fp32" and "fp32/reference" in cur:
            gaps[f"bf16 noise: {dtype}/reference vs fp32/reference"] = gap(f"{dtype}/reference", "fp32/reference")
        if f"{dtype}/reference-perturbed" in cur:
            gaps[f"chaos: {dtype}/reference-perturbed vs {dtype}/reference"] = gap(f"{dtype}/reference-perturbed",
                                                                                 f"{dtype}/reference")
    print(f"\n|Δloss| over {args.steps} steps" + " " * 36 + "max    final  mean(1st half)  mean(2nd half)")
    for k, v in gaps.items():
        print(f"{k:70s} {v['max']:.2e} {v['final']:.2e}       {v['mean_first_half']:.2e}        {v['mean_second_half']:.2e}")
    keys = list(cur)
    print("\nstep  " + "  ".join(f"{k[:22]:>22s}" for k in keys))
    for s in sorted(set(range(0, args.steps, max(1, args.steps // 10))) | {args.steps - 1}):
        print(f"{s:4d}  " + "  ".join(f"{cur[k][s]:22.5f}" for k in keys))
    if args.out:
        write_json(args.out, res)


if __name__ == "__main__":
    main()
