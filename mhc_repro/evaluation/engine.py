"""Batched scoring and greedy decoding over an LM with the DESIGN.md interface — no lm-eval import.

``lm_model.py`` adapts this to lm-eval's TemplateLM; ``benchmarks/eval_throughput.py`` drives it directly
on the GPU machine (which has no lm-eval). Everything here works on token ids; text enters only through
the ``decode`` callable used for stop strings.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


@dataclass
class Generation:
    """One greedy continuation: the generated ids (stop string / EOS excluded when found) and its text."""

    tokens: list[int]
    """Generated token ids, cut after the token that completed the first stop string (EOS dropped)."""
    text: str
    """Decoded continuation, cut just before the first stop string."""


def _amp_context(device: torch.device, bf16: bool):
    # bf16 autocast on CUDA: matmuls in bf16, the model keeps its own fp32 islands (mHC coefficients,
    # Sinkhorn) and returns fp32 logits. On CPU we stay in fp32 so scores match a plain forward exactly.
    if bf16 and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Engine:
    """Scores (context, continuation) token pairs and greedily extends contexts, in batches.

    ``model`` must implement ``forward(idx, *, cache=None, attention_mask=None) -> fp32 logits [B,T,V]``
    and ``new_cache(batch_size, max_len)`` (DESIGN.md, "The LM"). Batches are sorted by length
    (longest first, so an out-of-memory shows up in the first batch) and results come back in input order.
    """

    def __init__(self, model: nn.Module, *, eot_token_id: int, max_length: int, batch_size: int = 8,
                 device: str | torch.device = "cpu", bf16: bool = True, pad_token_id: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; must be >= 1")
        if max_length < 2:
            raise ValueError(f"max_length={max_length}; must be >= 2")
        self.model = model
        self.device = torch.device(device)
        self.eot_token_id = int(eot_token_id)
        self.pad_token_id = self.eot_token_id if pad_token_id is None else int(pad_token_id)
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.bf16 = bool(bf16)
        self._warned_gen_clip = False

    # ------------------------------------------------------------------ loglikelihood
    @torch.inference_mode()
    def loglikelihood(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[float, bool]]:
        """Sum of log p(continuation | context) and whether greedy decoding reproduces the continuation.

        Over-long inputs keep their last ``max_length`` tokens (truncated from the left), as lm-eval's
        HF backend does. Sequences in a batch are right-padded: under a causal mask padding after the
        real tokens cannot change their logits, so no attention mask is needed.
        """
        results: list[Optional[tuple[float, bool]]] = [None] * len(requests)
        order = sorted(range(len(requests)),
                       key=lambda i: (-(len(requests[i][0]) + len(requests[i][1])), i))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            rows, cont_lens = [], []
            for i in batch:
                ctx, cont = list(requests[i][0]), list(requests[i][1])
                if not cont:
                    raise ValueError(f"request {i}: empty continuation; nothing to score")
                if not ctx:
                    raise ValueError(f"request {i}: empty context; prepend the EOS/prefix token")
                # The last token is only ever a target, never an input.
                rows.append((ctx + cont)[-(self.max_length + 1):][:-1])
                cont_lens.append(min(len(cont), self.max_length))
            width = max(len(r) for r in rows)
            idx = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
            for b, r in enumerate(rows):
                idx[b, :len(r)] = torch.tensor(r, dtype=torch.long)
            with _amp_context(self.device, self.bf16):
                logits = self.model(idx.to(self.device))
            for b, i in enumerate(batch):
                n, c = len(rows[b]), cont_lens[b]
                target = torch.tensor(list(requests[i][1])[-c:], dtype=torch.long, device=self.device)
                logp = F.log_softmax(logits[b, n - c:n].float(), dim=-1)
                score = logp.gather(-1, target[:, None]).sum().item()
                greedy = bool((logp.argmax(-1) == target).all().item())
                results[i] = (score, greedy)
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ generation
    def generation_budget(self, max_gen_toks: int) -> int:
        """Tokens to generate: ``max_gen_toks`` clipped to half the context window, so that a task asking
        for more than a small model's window (BBH asks 1024) still leaves room for its prompt."""
        if max_gen_toks < 1:
            raise ValueError(f"max_gen_toks={max_gen_toks}; must be >= 1")
        budget = min(max_gen_toks, self.max_length // 2)
        if budget < max_gen_toks and not self._warned_gen_clip:
            log.warning("max_gen_toks=%d clipped to %d (half of max_length=%d)",
                        max_gen_toks, budget, self.max_length)
            self._warned_gen_clip = True
        return budget

    @torch.inference_mode()
    def generate(self, contexts: Sequence[Sequence[int]], *, max_gen_toks: int, until: Sequence[str] = (),
                 decode: Optional[Callable[[list[int]], str]] = None, use_cache: bool = True) -> list[Generation]:
        """Greedy continuations of ``contexts`` (token ids), in input order.

        Each context keeps its last ``max_length - budget`` tokens (left truncation); batches are
        left-padded and carry an attention mask, so every row sees its own RoPE positions. A row stops
        at EOS, at the first stop string in ``until`` (checked on the decoded text, so strings spanning
        several tokens are found) or after the budget. ``use_cache=False`` recomputes the whole sequence
        each step: slow, used by tests as the reference for the cached path.
        """
        if until and decode is None:
            raise ValueError("stop strings need a decode function")
        budget = self.generation_budget(max_gen_toks)
        keep = self.max_length - budget
        results: list[Optional[Generation]] = [None] * len(contexts)
        order = sorted(range(len(contexts)), key=lambda i: (-min(len(contexts[i]), keep), i))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            prompts = [list(contexts[i])[-keep:] for i in batch]
            if any(len(p) == 0 for p in prompts):
                raise ValueError("empty generation context; prepend the EOS/prefix token")
            outs = self._generate_batch(prompts, budget, list(until), decode, use_cache)
            for i, out in zip(batch, outs):
                results[i] = out
        return results  # type: ignore[return-value]

    def _generate_batch(self, prompts: list[list[int]], budget: int, until: list[str],
                        decode: Optional[Callable[[list[int]], str]], use_cache: bool) -> list[Generation]:
        bsz, width = len(prompts), max(len(p) for p in prompts)
        idx = torch.full((bsz, width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((bsz, width), dtype=torch.long)
        for b, p in enumerate(prompts):  # left padding: the newest token of every row is in the last column
            idx[b, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[b, width - len(p):] = 1
        idx, mask = idx.to(self.device), mask.to(self.device)
        generated: list[list[int]] = [[] for _ in range(bsz)]
        texts: list[Optional[str]] = [None] * bsz  # set once a row is finished
        cache = self.model.new_cache(bsz, width + budget) if use_cache else None
        seq, step_in = idx, idx
        for _ in range(budget):
            with _amp_context(self.device, self.bf16):
                if use_cache:
                    logits = self.model(step_in, cache=cache, attention_mask=mask)
                else:
                    logits = self.model(seq, attention_mask=mask)
            nxt = logits[:, -1].float().argmax(-1)
            nxt_list = nxt.tolist()
            for b in range(bsz):
                if texts[b] is not None:
                    continue
                tok = nxt_list[b]
                if tok == self.eot_token_id:
                    texts[b] = decode(generated[b]) if decode else ""
                    continue
                generated[b].append(tok)
                if until:
                    text = decode(generated[b])
                    cut = min((text.find(s) for s in until if s and s in text), default=-1)
                    if cut >= 0:
                        texts[b] = text[:cut]
            if all(t is not None for t in texts):
                break
            # Finished rows keep being fed (their outputs are ignored) so the batch stays rectangular.
            step_in = nxt[:, None]
            seq = torch.cat([seq, step_in], dim=1)
            mask = torch.cat([mask, mask.new_ones(bsz, 1)], dim=1)
        return [Generation(tokens=generated[b],
                           text=texts[b] if texts[b] is not None else (decode(generated[b]) if decode else ""))
                for b in range(bsz)]
