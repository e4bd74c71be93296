"""lm-eval model ``mhc-repro``: a trained mhc-repro checkpoint (or an in-memory LM) behind lm-eval's API.

Use from lm-eval directly: ``lm_eval --model mhc-repro --model_args checkpoint=<run dir | .ckpt> ...``
(after ``import mhc_repro.evaluation.lm_model``), or through ``mhc-repro eval``. The batching, padding,
truncation and KV-cache decoding live in ``engine.py``; this module only adapts lm-eval's requests.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from torch import nn

from .engine import Engine

log = logging.getLogger(__name__)

EOT_TOKEN = "<|endoftext|>"  # DESIGN.md: document separator / EOS token of the project's tokenizers


def _as_bool(v: Any) -> bool:
    if isinstance(v, str):  # lm-eval passes model_args from the command line as strings
        if v.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected true/false, got {v!r}")
        return v.lower() in ("true", "1")
    return bool(v)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@register_model("mhc-repro")
class MhcReproLM(TemplateLM):
    """Wraps ``mhc_repro.model.LM`` + its ``tokenizers.Tokenizer``.

    Args:
        checkpoint: run directory or ``.ckpt`` (loaded with ``training.checkpoint.load_lm``); or pass
            ``model`` and ``tokenizer`` objects instead.
        batch_size: sequences per forward pass (loglikelihood) / per decoding batch (generation).
        device: ``cpu``, ``cuda`` or ``cuda:N``; default CUDA when available.
        max_length: context window; default the model's ``max_seq_len``.
        max_gen_toks: generation length for tasks that set none (lm-eval's HF default, 256).
        max_gen_toks_cap: optional hard cap on every task's generation length (smoke tests, CI);
            recorded with the results when set, since it changes the scores.
        bf16: bf16 autocast on CUDA (ignored on CPU, which runs fp32).
    """

    def __init__(self, checkpoint: Optional[str] = None, *, model: Optional[nn.Module] = None,
                 tokenizer: Any = None, batch_size: int | str = 8, device: Optional[str] = None,
                 max_length: Optional[int | str] = None, max_gen_toks: int | str = 256,
                 max_gen_toks_cap: Optional[int | str] = None, bf16: bool | str = True, **unused: Any):
        super().__init__()
        if unused:
            log.warning("mhc-repro model ignores arguments %s", sorted(unused))
        if (checkpoint is None) == (model is None):
            raise ValueError("give exactly one of checkpoint=<run dir | .ckpt> or model=<LM> (+ tokenizer)")
        if checkpoint is not None:
            from mhc_repro.training.checkpoint import load_lm

            model, cfg, tokenizer = load_lm(checkpoint)
            if tokenizer is None:
                raise FileNotFoundError(f"checkpoint {checkpoint}: its run directory has no tokenizer.json")
            default_len = cfg.max_seq_len
        else:
            if tokenizer is None:
                raise ValueError("model=<LM> needs tokenizer=<tokenizers.Tokenizer>")
            cfg = getattr(model, "cfg", None)
            default_len = getattr(cfg, "max_seq_len", None) or getattr(model, "max_seq_len", None)
        if str(batch_size).startswith("auto"):
            raise ValueError(f"batch_size={batch_size!r}; give a number (automatic sizing is not supported)")
        self.tokenizer = tokenizer
        eot = tokenizer.token_to_id(EOT_TOKEN)
        if eot is None:
            raise ValueError(f"tokenizer has no {EOT_TOKEN!r} token (DESIGN.md requires it as EOS)")
        self._device = torch.device(device or default_device())
        self.model = model.to(self._device).eval()
        length = int(max_length) if max_length is not None else default_len
        if length is None:
            raise ValueError("max_length is unknown: the model has no cfg.max_seq_len; pass max_length=")
        self.max_gen_toks = int(max_gen_toks)
        self.max_gen_toks_cap = int(max_gen_toks_cap) if max_gen_toks_cap not in (None, "", "None") else None
        self.engine = Engine(self.model, eot_token_id=eot, max_length=int(length), batch_size=int(batch_size),
                             device=self._device, bf16=_as_bool(bf16))

    # ---- lm-eval plumbing -------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.engine.eot_token_id

    @property
    def max_length(self) -> int:
        return self.engine.max_length

    @property
    def batch_size(self) -> int:
        return self.engine.batch_size

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return "mhc-repro-" + str(self.tokenizer.get_vocab_size())

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs: Any) -> list[int]:
        # The project's tokenizers add no BOS; EOS only separates documents.
        return self.tokenizer.encode(string, add_special_tokens=False).ids

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=False)

    # ---- scoring ----------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs: Any):
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        results = self.engine.loglikelihood(pairs)
        for (key, _, _), res in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, res)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        # Perplexity-style scoring: disjoint windows of max_length tokens, each conditioned on the
        # previous token (EOS before the first), as lm-eval's HF backend does.
        windows, owners = [], []
        for i, req in enumerate(requests):
            (string,) = req.args
            for ctx, cont in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((ctx, cont))
                owners.append(i)
        scores = self.engine.loglikelihood(windows)
        totals = [0.0] * len(requests)
        for i, (logp, _) in zip(owners, scores):
            totals[i] += logp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        # Requests differ in stop strings and lengths: decode each group in its own batches.
        groups: dict[tuple, list[int]] = {}
        settings = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            kw = dict(gen_kwargs or {})
            until = kw.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_gen = int(kw.pop("max_gen_toks", self.max_gen_toks))
            if self.max_gen_toks_cap is not None:
                max_gen = min(max_gen, self.max_gen_toks_cap)
            if _as_bool(kw.pop("do_sample", False)) and float(kw.get("temperature", 1.0) or 0.0) > 0:
                raise ValueError(f"do_sample=True with temperature={kw.get('temperature')}; "
                                 "mhc-repro decodes greedily only")
            settings.append((context, until, max_gen))
            groups.setdefault((tuple(until), max_gen), []).append(i)
        out: list[Optional[str]] = [None] * len(requests)
        for (until, max_gen), members in groups.items():
            contexts = [self.tok_encode(settings[i][0]) or [self.prefix_token_id] for i in members]
            gens = self.engine.generate(contexts, max_gen_toks=max_gen, until=list(until),
                                        decode=self.tok_decode)
            for i, g in zip(members, gens):
                out[i] = g.text
                self.cache_hook.add_partial("generate_until", requests[i].args, g.text)
        return out  # type: ignore[return-value]
