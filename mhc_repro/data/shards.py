"""Token shards: documents tokenised once into a flat memmap, then read as packed fixed-length samples.

Layout: <cache>/shards/<key>/<split>.bin (uint16 when every id < 65536, else uint32) and
<split>.json (dtype, num_tokens, num_docs), plus manifest.json written by build.py. Each document is
followed by EOS, so EOS separates documents inside packed samples. The key combines the source and
split fingerprints, the token budget and the tokenizer fingerprint, so a second run with the same
inputs reads the memmap and never re-tokenises.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

SHARD_VERSION = 3  # 2: streamed build (build.py), one directory per (source, split, budget, tokenizer)
# 3: special-token strings inside documents are text, not separators; no paragraph split where the
#    tokenizer's pre-tokenizer merges across it (Llama-3 / DeepSeek-V3 style "\s*[\r\n]+")
DOCS_PER_BATCH = 64


def shard_key(split_fingerprint: str, tokenizer_fingerprint: str, eos_id: int | None = None) -> str:
    """eos_id: the separator written after each document (a given tokenizer may hold several candidates)."""
    eos = "" if eos_id is None else f"|eos:{eos_id}"
    return hashlib.sha256(f"{split_fingerprint}|{tokenizer_fingerprint}{eos}|shards-v{SHARD_VERSION}"
                          .encode()).hexdigest()[:20]


# Split between the two newlines of a paragraph break with non-space on both sides: GPT-2-style
# byte-level pre-tokenisation yields the same pieces there, so ids equal those of the whole document,
# while many small pieces let the Rust encoder use every core (a 150 KB play is otherwise one task).
# Pre-tokenisers that keep "\n\n" (or ".\n\n") in one piece (Llama-3, DeepSeek-V3) would tokenise the
# cut differently: `_split_is_exact` probes the tokenizer and whole documents are encoded then.
_PARA_BREAK = re.compile(r"(?<=\S\n)(?=\n\S)")


def _pieces(text: str, target: int = 8192) -> list[str]:
    out, cur, n = [], [], 0
    for part in _PARA_BREAK.split(text):
        cur.append(part)
        n += len(part)
        if n >= target:
            out.append("".join(cur))
            cur, n = [], 0
    if cur or not out:
        out.append("".join(cur))
    return out


_PROBE_CHARS = "a.1,;)]\"'-?!é中"


def _split_is_exact(encode) -> bool:
    """True when cutting "x<l>\n" | "\n<r>y" gives the ids of the uncut text for every probe pair."""
    pairs = [(f"x{a}\n", f"\n{b}y") for a in _PROBE_CHARS for b in _PROBE_CHARS]
    whole = encode([l + r for l, r in pairs], add_special_tokens=False)
    parts = encode([t for pair in pairs for t in pair], add_special_tokens=False)
    return all(w.ids == parts[2 * k].ids + parts[2 * k + 1].ids for k, w in enumerate(whole))


def _encode_batch(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids per text (module-level so tests can check that cached shards skip it).

    Text that spells a special token (a literal "<|endoftext|>" in a web page) is encoded as text:
    only the separator the builder appends marks a document boundary."""
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)  # _fast: no offsets
    literal = getattr(tokenizer, "encode_special_tokens", None)
    if literal is not None:
        tokenizer.encode_special_tokens = True
    try:
        split = _split_is_exact(encode)
        pieces, owner = [], []
        for i, text in enumerate(texts):
            for p in (_pieces(text) if split else [text]):
                pieces.append(p)
                owner.append(i)
        out: list[list[int]] = [[] for _ in texts]
        for i, enc in zip(owner, encode(pieces, add_special_tokens=False)):
            out[i].extend(enc.ids)
    finally:
        if literal is not None:
            tokenizer.encode_special_tokens = literal
    return out


@dataclass
class TokenShard:
    path: Path          # .bin memmap
    dtype: str
    num_tokens: int
    num_docs: int

    def tokens(self) -> np.ndarray:
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.num_tokens,))


def token_dtype(tokenizer) -> np.dtype:
    """uint16 when every id fits (vocab <= 65536), else uint32 (e.g. DeepSeek-V3's 129280)."""
    vocab = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1
    return np.dtype(np.uint16 if vocab <= 1 << 16 else np.uint32)


class ShardWriter:
    """Appends documents (ids + EOS) to a token file; the caller renames it into place when complete."""

    def __init__(self, path: Path, dtype: np.dtype, eos_id: int):
        self.path, self.dtype, self.eos_id = Path(path), np.dtype(dtype), eos_id
        self.num_tokens = self.num_docs = 0
        self._f = open(self.path, "wb")

    def append(self, ids: list[int]) -> int:
        arr = np.empty(len(ids) + 1, dtype=self.dtype)
        arr[:-1] = ids
        arr[-1] = self.eos_id
        self._f.write(arr.tobytes())
        self.num_tokens += arr.size
        self.num_docs += 1
        return arr.size

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> dict:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        return {"dtype": self.dtype.name, "num_tokens": self.num_tokens, "num_docs": self.num_docs,
                "eos_id": self.eos_id, "version": SHARD_VERSION}

    def abort(self) -> None:
        self._f.close()
        self.path.unlink(missing_ok=True)


def build_shard(texts: Iterable[str], tokenizer, eos_id: int, out_dir: Path, split: str,
                docs_per_batch: int = DOCS_PER_BATCH) -> TokenShard:
    """Tokenise texts into out_dir/<split>.bin unless a complete shard is already there.

    A single-split helper (the DataModule builds train and val together with build.build_shards)."""
    out_dir = Path(out_dir)
    meta_path, bin_path = out_dir / f"{split}.json", out_dir / f"{split}.bin"
    if meta_path.exists() and bin_path.exists():
        meta = json.loads(meta_path.read_text())
        return TokenShard(bin_path, meta["dtype"], meta["num_tokens"], meta["num_docs"])
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(bin_path.with_suffix(f".bin.tmp{os.getpid()}"), token_dtype(tokenizer), eos_id)
    try:
        batch: list[str] = []
        for text in texts:
            batch.append(text)
            if len(batch) >= docs_per_batch:
                for ids in _encode_batch(tokenizer, batch):
                    writer.append(ids)
                batch.clear()
        for ids in _encode_batch(tokenizer, batch):
            writer.append(ids)
        meta = writer.close()
    except BaseException:
        writer.abort()
        raise
    os.replace(writer.path, bin_path)
    meta_tmp = meta_path.with_suffix(f".json.tmp{os.getpid()}")
    meta_tmp.write_text(json.dumps(meta))
    os.replace(meta_tmp, meta_path)  # written last: its presence marks a complete shard
    return TokenShard(bin_path, meta["dtype"], meta["num_tokens"], meta["num_docs"])


class PackedSequences(Dataset):
    """Sample i = tokens[i*T : i*T + T + 1] -> (inputs [T], targets [T]) as int64 tensors.

    Consecutive samples share one boundary token, so every token is a target exactly once (except
    the very first). The memmap opens lazily so the dataset pickles cheaply into worker processes."""

    def __init__(self, shard: TokenShard, seq_len: int):
        self.shard, self.seq_len = shard, seq_len
        self._tokens: np.ndarray | None = None

    def __len__(self) -> int:
        return max(0, (self.shard.num_tokens - 1) // self.seq_len)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range [0, {len(self)})")
        if self._tokens is None:
            self._tokens = self.shard.tokens()
        chunk = torch.from_numpy(self._tokens[i * self.seq_len: (i + 1) * self.seq_len + 1].astype(np.int64))
        return chunk[:-1], chunk[1:]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None}
