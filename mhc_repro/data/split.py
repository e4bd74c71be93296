"""Validation split: which whole documents of a streamed source are held out.

The decision is made per document while streaming (no document list is kept), by one of these rules:
- "named": data.val_docs, or the embedded corpus's pinned works (Twelfth Night, Paradise Regained);
- "exact": the row count n is known up front (text files, embedded with max_documents): exactly
  k = max(1, round(n * val_fraction)) rows from a seeded shuffle of range(n);
- "hash": streamed json/parquet/hub sources: row i is held out when a hash of (seed, i) falls below
  val_fraction, so each run makes the same choice without knowing n;
- "tail": a single-document source holds out its final val_fraction of blank-line paragraphs as one
  contiguous block (two pieces "<id>[:-k]" and "<id>[-k:]");
- "none": val_fraction = 0.
The plan's `spec` names the rule and its parameters; with the source fingerprint it keys the caches.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

from .config import DataConfig
from .corpus import DEFAULT_VAL_DOCS
from .sources import Doc, Source

SPLIT_VERSION = 2  # bump when a rule changes


@dataclass
class SplitPlan:
    rule: str
    spec: dict
    fingerprint: str
    is_val: Callable[[int, str], bool]
    named: Optional[list[str]] = None           # "named": the ids that must be found
    _transform: Optional[Callable[[Iterator[Doc]], Iterator[Doc]]] = field(default=None, repr=False)

    def docs(self, source: Source) -> Iterator[Doc]:
        it = source.docs()
        return self._transform(it) if self._transform else it


def _hash_unit(seed: int, index: int) -> float:
    h = hashlib.blake2b(f"{seed}|{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0 ** 64


def plan_split(source: Source, cfg: DataConfig) -> SplitPlan:
    transform = None
    named = None
    if cfg.val_docs is not None or (cfg.is_embedded and not cfg.max_documents):
        pinned = source.manifest.get("default_val_docs", DEFAULT_VAL_DOCS)
        named = list(cfg.val_docs if cfg.val_docs is not None else pinned)
        if source.ids is not None:
            known = set(source.ids)
            missing = [w for w in named if w not in known]
            if missing:
                sample = ", ".join(sorted(known)[:5])
                raise ValueError(f"data.val_docs: unknown document id(s) {missing}; ids look like: {sample}, ...")
        wanted = set(named)
        rule, params = "named", {"val_docs": named}
        is_val = lambda i, doc_id: doc_id in wanted  # noqa: E731
    elif cfg.val_fraction == 0:
        rule, params, is_val = "none", {}, (lambda i, doc_id: False)
    elif source.num_docs == 1:
        rule, params = "tail", {"val_fraction": cfg.val_fraction}
        is_val = lambda i, doc_id: i == 1  # noqa: E731  (the second piece is the tail)
        transform = lambda docs: _tail_pieces(docs, cfg.val_fraction)  # noqa: E731
    elif source.num_docs is not None:
        n = source.num_docs
        k = max(1, round(n * cfg.val_fraction))
        order = list(range(n))  # n is a file count or a small in-memory corpus: fine to list
        random.Random(cfg.seed).shuffle(order)
        chosen = set(order[:k])
        rule, params = "exact", {"seed": cfg.seed, "val_fraction": cfg.val_fraction, "n": n}
        is_val = lambda i, doc_id: i in chosen  # noqa: E731
    else:
        rule, params = "hash", {"seed": cfg.seed, "val_fraction": cfg.val_fraction}
        is_val = lambda i, doc_id: _hash_unit(cfg.seed, i) < cfg.val_fraction  # noqa: E731
    spec = {"rule": rule, "version": SPLIT_VERSION, **params}
    fp = hashlib.sha256(json.dumps([source.fingerprint, spec, cfg.max_documents]).encode()).hexdigest()
    return SplitPlan(rule, spec, fp, is_val, named, transform)


def _tail_pieces(docs: Iterator[Doc], val_fraction: float) -> Iterator[Doc]:
    for _, doc_id, text in docs:  # the one document
        paras = text.split("\n\n")
        k = max(1, round(len(paras) * val_fraction)) if len(paras) > 1 else 0
        if k == 0:
            raise ValueError(f"data.source: single document {doc_id!r} has no blank-line paragraphs to hold out; "
                             "supply several documents or set data.val_fraction=0")
        yield 0, f"{doc_id}[:-{k}]", "\n\n".join(paras[:-k])
        yield 1, f"{doc_id}[-{k}:]", "\n\n".join(paras[-k:])
