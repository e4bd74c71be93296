"""Loss curves of a small mHC LM trained with the fused Triton kernels vs the reference ops.

Same seed, same init, same batches; only ``residual.backend`` differs. Without CUDA it runs the
kernels through the Triton interpreter on CPU (fp32), so the two curves should agree to float
rounding that grows slowly with training (chaotic divergence), far inside bf16 noise.

    PYTHONPATH=. python benchmarks/train_parity.py --steps 200 --out reports/kernels/train_parity.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are imported
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mhc_repro.model.transformer import LM  # noqa: E402
from mhc_repro.presets import get_preset, with_variant  # noqa: E402


def batches(vocab: int, batch: int, seq: int, steps: int, seed: int):
    """Tokens from a fixed random bigram chain: learnable, so the loss falls well below log(vocab)."""
    g = torch.Generator().manual_seed(seed)
    trans = torch.softmax(3.0 * torch.randn(vocab, vocab, generator=g), -1)
    for _ in range(steps):
        tok = torch.empty(batch, seq + 1, dtype=torch.long)
        tok[:, 0] = torch.randint(0, vocab, (batch,), generator=g)
        for t in range(seq):
            tok[:, t + 1] = torch.multinomial(trans[tok[:, t]], 1, generator=g).squeeze(1)
        yield tok


def train(backend: str, args, device) -> list[float]:
    base = get_preset("tiny")
    cfg = dataclasses.replace(base, vocab_size=args.vocab, d_model=args.d_model, n_blocks=args.blocks,
                              max_seq_len=args.seq, dense_ffn_width=2 * args.d_model,
                              attention=dataclasses.replace(base.attention, n_heads=2, head_dim=args.d_model // 2))
    cfg = with_variant(cfg, "mhc", n=args.n, backend=backend)
    torch.manual_seed(args.seed)
    model = LM(cfg.validate()).to(device)
    opt = torch.optim.AdamW(model.param_groups(0.1), lr=args.lr, betas=(0.9, 0.95))
    losses = []
    for tok in batches(args.vocab, args.batch, args.seq, args.steps, args.seed + 1):
        tok = tok.to(device)
        logits = model(tok[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tok[:, 1:].reshape(-1))
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
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    res = dict(args=vars(args), device=str(device), interpreter=os.environ.get("TRITON_INTERPRET") == "1")
    for backend in ("reference", "triton"):
        t0 = time.time()
        res[backend] = train(backend, args, device)
        res[f"{backend}_s"] = time.time() - t0
        print(f"{backend}: {res[f'{backend}_s']:.0f}s, loss {res[backend][0]:.4f} -> {res[backend][-1]:.4f}", flush=True)
    d = [abs(a - b) for a, b in zip(res["reference"], res["triton"])]
    res["max_abs_diff"], res["final_abs_diff"] = max(d), d[-1]
    print(f"max |loss_ref - loss_triton| over {args.steps} steps: {max(d):.2e} (final {d[-1]:.2e})")
    for s in range(0, args.steps, max(1, args.steps // 10)):
        print(f"step {s:4d}  ref {res['reference'][s]:.5f}  triton {res['triton'][s]:.5f}")
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
