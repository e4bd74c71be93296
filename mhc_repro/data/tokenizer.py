"""Tokenizers: train a byte-level BPE on a bounded sample of the training documents, or load one.

Trained tokenizers are cached as <cache>/tokenizers/bpe-v<vocab>-<hash of key>.json (key = source,
split and sample limits), so a second run with the same inputs and vocab size reuses the file. The
sample (`sample_texts`) is the first training documents up to a document / byte limit, streamed into
`train_from_iterator`, so a huge source never has to fit in memory. `<|endoftext|>` is the
document separator / EOS (DESIGN.md).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

EOS_TOKEN = "<|endoftext|>"
BPE_RECIPE = 1  # bump when the training recipe changes: part of the cache key


def _chunks(texts: Iterable[str], max_chars: int = 1 << 16) -> Iterator[str]:
    # Feed paragraph-sized pieces so the Rust trainer can parallelise and never holds one huge string.
    for text in texts:
        for i in range(0, len(text), max_chars):
            yield text[i:i + max_chars]


def train_bpe(texts: Iterable[str], vocab_size: int, eos_token: str = EOS_TOKEN) -> Tokenizer:
    """Byte-level BPE (GPT-2 style pre-tokenisation, no normaliser: decode(encode(s)) == s)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[eos_token],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_chunks(texts), trainer=trainer)
    return tok


def sample_texts(texts: Iterable[str], max_docs: int | None = None, max_bytes: int | None = None) -> Iterator[str]:
    """The first texts, stopping before max_docs documents or max_bytes UTF-8 bytes are exceeded
    (the document that crosses max_bytes is cut at the limit, so a tiny limit still yields text)."""
    n_bytes = 0
    for i, text in enumerate(texts):
        if max_docs is not None and i >= max_docs:
            return
        size = len(text.encode())
        if max_bytes is not None and n_bytes + size > max_bytes:
            rest = text.encode()[: max_bytes - n_bytes].decode("utf-8", errors="ignore")
            if rest:
                yield rest
            return
        n_bytes += size
        yield text


def tokenizer_fingerprint(tok: Tokenizer) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()


def _save_atomic(tok: Tokenizer, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json.tmp")
    os.close(fd)
    tok.save(tmp)
    os.replace(tmp, path)


def trained_tokenizer(texts: Iterable[str], vocab_size: int, key: str, cache_dir: Path,
                      eos_token: str = EOS_TOKEN) -> tuple[Tokenizer, Path]:
    """The cached BPE for (key = corpus/split fingerprint, vocab size), training it when absent."""
    tag = hashlib.sha256(f"{key}|{eos_token}|recipe{BPE_RECIPE}".encode()).hexdigest()[:16]
    path = Path(cache_dir) / "tokenizers" / f"bpe-v{vocab_size}-{tag}.json"
    if path.exists():
        return Tokenizer.from_file(str(path)), path
    from .build import file_lock  # ranks of a node wait for the first trainer instead of all training

    with file_lock(path.with_suffix(".lock")):
        if path.exists():
            return Tokenizer.from_file(str(path)), path
        tok = train_bpe(texts, vocab_size, eos_token)
        _save_atomic(tok, path)
    return tok, path


def load_tokenizer(spec: str, cache_dir: Path) -> tuple[Tokenizer, Path]:
    """A tokenizer.json file, a directory holding one, or a hub name (saved into the cache)."""
    p = Path(spec).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
        if not p.exists():
            raise ValueError(f"data.tokenizer: directory {spec!r} has no tokenizer.json")
    if p.is_file():
        try:
            return Tokenizer.from_file(str(p)), p.resolve()
        except Exception as e:
            raise ValueError(f"data.tokenizer: {str(p)!r} is not a HF tokenizers JSON file ({e})") from None
    if spec.endswith(".json") or spec.startswith((".", "/", "~")):
        raise ValueError(f"data.tokenizer: file {spec!r} does not exist; allowed: a tokenizer.json path, "
                         "a directory with tokenizer.json, a hub name, or None to train a BPE")
    cached = Path(cache_dir) / "tokenizers" / "hub" / f"{spec.replace('/', '__')}.json"
    if cached.exists():
        return Tokenizer.from_file(str(cached)), cached
    try:
        tok = Tokenizer.from_pretrained(spec)
    except Exception as e:
        raise ValueError(f"data.tokenizer: {spec!r} is not a local file and could not be fetched from the "
                         f"Hugging Face hub ({type(e).__name__}); offline? pass a tokenizer.json path "
                         "or None to train a BPE") from None
    _save_atomic(tok, cached)
    return tok, cached


def eos_id(tok: Tokenizer, eos_token: str = EOS_TOKEN) -> int:
    i = tok.token_to_id(eos_token)
    if i is None:
        raise ValueError(f"data.eos_token: {eos_token!r} is not in the tokenizer's vocabulary; "
                         "set data.eos_token to that tokenizer's document separator")
    return i


def check_vocab(tok: Tokenizer, model_vocab_size: int | None) -> None:
    """Every token id must be a valid row of the model's embedding."""
    # Largest id + 1, not the count: added tokens may leave gaps above the base vocabulary.
    n = max(tok.get_vocab(with_added_tokens=True).values()) + 1
    if model_vocab_size is not None and n > model_vocab_size:
        raise ValueError(f"tokenizer has {n} tokens but model.vocab_size is {model_vocab_size}; "
                         f"use a model vocab_size >= {n} or a smaller tokenizer (data.vocab_size)")
