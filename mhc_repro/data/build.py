"""Streaming build of the train/val token shards: bounded memory, token budget, atomic commit.

One pass over the documents: each is routed to train or val (split.py), collected into a chunk of
at most `chunk_chars` characters (plus the one document that crosses it), tokenised with one
`encode_batch` call and appended to that split's token file, which is flushed after every chunk.
Nothing else accumulates, so memory is bounded by one chunk whatever the corpus size. With a token
budget the pass stops after the first document that takes the training file past max_tokens (the
same document whatever the chunk size, so the result does not depend on it).

Everything is written into a temporary directory next to the target, which is renamed to
<cache>/shards/<key>/ only when complete, manifest.json included. A build that dies midway leaves
only a "<key>.tmp-*" directory that no reader trusts (the next build under the lock removes it). A
file lock makes concurrent builders (ranks of one node) wait for the first one instead of racing.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from . import shards
from .shards import ShardWriter, TokenShard, token_dtype

CHUNK_CHARS = 8 << 20       # text per encode_batch call: ~1000 pieces of 8 KB keep every core busy
LOG_EVERY_S = 300          # without a terminal (tqdm off), print one progress line this often
MAX_LISTED_VAL_DOCS = 1000  # the manifest lists at most this many held-out ids (counts are exact)


@contextmanager
def file_lock(path: Path) -> Iterator[bool]:
    """Exclusive lock on `path` (created if absent); blocks until the holder releases it. Yields False
    where the filesystem cannot lock (some network mounts): callers then rely on atomic renames only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_built(out_dir: Path) -> Optional[dict]:
    """The manifest of a complete build in out_dir, or None (never a half-written one: see module doc)."""
    path = Path(out_dir) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


def shards_of(out_dir: Path, manifest: dict) -> dict[str, TokenShard]:
    return {name: TokenShard(Path(out_dir) / f"{name}.bin", m["dtype"], m["num_tokens"], m["num_docs"])
            for name, m in manifest["shards"].items()}


def build_shards(docs: Iterable[tuple[int, str, str]], is_val: Callable[[int, str], bool], tokenizer,
                 eos_id: int, out_dir: Path, *, max_tokens: Optional[int] = None,
                 chunk_chars: Optional[int] = None, named_val: Optional[list[str]] = None,
                 info: Optional[dict] = None, desc: str = "tokenizing") -> dict:
    """Build (or find) out_dir/{train,val}.bin + manifest.json and return the manifest.

    chunk_chars: None = CHUNK_CHARS (read at call time). info (source/tokenizer fingerprints, ...) is
    stored in the manifest. named_val: ids that must be
    among the held-out documents read (else ValueError, and nothing is kept)."""
    out_dir = Path(out_dir)
    done = load_built(out_dir)
    if done is not None:
        return done
    with file_lock(out_dir.parent / f"{out_dir.name}.lock") as locked:
        done = load_built(out_dir)  # another process finished it while we waited
        if done is not None:
            return done
        if locked:  # no other builder can be running: whatever is here was left by a killed build
            for stale in out_dir.parent.glob(f"{out_dir.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
            if out_dir.exists():  # a directory without manifest.json is not a build: never trust it
                shutil.rmtree(out_dir)
        tmp = Path(tempfile.mkdtemp(prefix=f"{out_dir.name}.tmp-", dir=out_dir.parent))
        try:
            manifest = _build(docs, is_val, tokenizer, eos_id, tmp, max_tokens, chunk_chars or CHUNK_CHARS, named_val,
                              info or {}, desc)
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
            try:
                os.replace(tmp, out_dir)
            except OSError:  # without a lock another builder may have committed first: use its build
                if load_built(out_dir) is None:
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return load_built(out_dir)


def _build(docs, is_val, tokenizer, eos_id, tmp: Path, max_tokens, chunk_chars, named_val, info, desc) -> dict:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    dtype = token_dtype(tokenizer)
    writers = {name: ShardWriter(tmp / f"{name}.bin", dtype, eos_id) for name in ("train", "val")}
    chars = {"train": 0, "val": 0}
    nbytes = 0
    val_ids: list[str] = []
    found = set()
    named = set(named_val or ())
    chunk: list[tuple[str, str, str]] = []
    chunk_size = 0
    stats = {"chunks": 0, "max_chunk_docs": 0, "max_chunk_chars": 0}
    stopped = False
    bar = tqdm(total=max_tokens, unit="tok", unit_scale=True, desc=desc, disable=None, mininterval=5)
    last_log = [t0]

    def flush() -> bool:
        """Tokenise and write the chunk; True once the training file passed max_tokens."""
        nonlocal chunk_size, nbytes
        stats["chunks"] += 1
        stats["max_chunk_docs"] = max(stats["max_chunk_docs"], len(chunk))
        stats["max_chunk_chars"] = max(stats["max_chunk_chars"], chunk_size)
        encoded = shards._encode_batch(tokenizer, [t for _, _, t in chunk])
        hit = stopped
        for (split, doc_id, text), ids in zip(chunk, encoded):
            if hit and not (split == "val" and doc_id in named):
                continue  # the budget is met: the rest of the chunk is dropped, but for named held-out docs
            writers[split].append(ids)
            chars[split] += len(text)
            nbytes += len(text.encode())
            if split == "val":
                if len(val_ids) < MAX_LISTED_VAL_DOCS:
                    val_ids.append(doc_id)
                if named_val is not None:
                    found.add(doc_id)
            elif max_tokens is not None and writers["train"].num_tokens > max_tokens:
                hit = True
        for w in writers.values():
            w.flush()
        shown = writers["train"].num_tokens + (writers["val"].num_tokens if max_tokens is None else 0)
        bar.update(shown - bar.n)  # the bar counts toward the budget when there is one
        if bar.disable and time.perf_counter() - last_log[0] > LOG_EVERY_S:  # batch jobs: a plain line
            last_log[0] = time.perf_counter()
            print(f"[mhc-repro data] {desc}: {writers['train'].num_tokens:,} train + {writers['val'].num_tokens:,} "
                  f"val tokens{f' of {max_tokens:,}' if max_tokens else ''}, "
                  f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        chunk.clear()
        chunk_size = 0
        return hit

    docs = iter(docs)
    try:
        for index, doc_id, text in docs:
            chunk.append(("val" if is_val(index, doc_id) else "train", doc_id, text))
            chunk_size += len(text)
            if chunk_size >= chunk_chars and flush():
                stopped = True
                break
        else:
            if chunk:
                stopped = flush()
        # Named held-out documents do not depend on the training budget: read on for the missing ones
        # (held-out documents only; the embedded corpus pins its held-out works this way).
        wanted = named - found
        for index, doc_id, text in (docs if stopped and wanted else ()):
            if doc_id not in wanted or not is_val(index, doc_id):
                continue
            chunk.append(("val", doc_id, text))
            chunk_size += len(text)
            wanted.discard(doc_id)
            if chunk_size >= chunk_chars or not wanted:
                flush()
            if not wanted:
                break
        if chunk:
            flush()
        metas = {name: w.close() for name, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        bar.close()

    if named_val is not None and (missing := [v for v in named_val if v not in found]):
        raise ValueError(f"data.val_docs: document id(s) {missing[:5]} not found in the documents read")
    if metas["train"]["num_docs"] == 0:
        raise ValueError("data: no training documents (empty source, or every document is held out; "
                         "lower val_fraction or shorten val_docs)")
    if metas["val"]["num_docs"] == 0:
        (tmp / "val.bin").unlink()
        del metas["val"]
    for name, meta in metas.items():
        (tmp / f"{name}.json").write_text(json.dumps(meta))
    return {
        **info, "version": shards.SHARD_VERSION, "dtype": dtype.name, "eos_id": eos_id,
        "shards": metas, "max_tokens": max_tokens, "stopped_early": stopped,
        "num_documents": sum(m["num_docs"] for m in metas.values()), "bytes": nbytes,
        "chars": chars["train"] + chars["val"],
        "split": {**info.get("split", {}), "val_docs": val_ids,
                  "val_docs_listed_all": len(val_ids) == metas.get("val", {"num_docs": 0})["num_docs"],
                  "num_train_docs": metas["train"]["num_docs"],
                  "num_val_docs": metas.get("val", {"num_docs": 0})["num_docs"],
                  "train_chars": chars["train"], "val_chars": chars["val"]},
        "chunk_chars": chunk_chars, **stats, "build_seconds": round(time.perf_counter() - t0, 2),
    }
