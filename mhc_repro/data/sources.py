"""Document sources behind DataConfig.source, read as streams of (index, doc id, text).

A `Source` never holds a large corpus: `docs()` returns a fresh iterator in a fixed order. The
embedded corpora are small and kept in memory; local files and hub datasets are streamed by
`datasets` (IterableDataset), so memory is bounded by one document, not by the corpus. The index is
the row number in the source (empty documents are skipped but keep their number), which the
validation split hashes. The manifest says what went in and carries a fingerprint that is cheap to
compute (file digests, memoised by size and mtime; the hub name) and keys the tokenizer and shard
caches, so a cache hit never reads the text.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from .config import EMBEDDED_LARGE, LOCAL_SUFFIXES, DataConfig
from .corpus import load_embedded_corpus, sha256_file

Doc = tuple[int, str, str]  # (row index in the source, document id, text)


@dataclass
class Source:
    manifest: dict                           # what went in; includes "fingerprint"
    docs: Callable[[], Iterator[Doc]]        # a fresh iterator over the documents, in source order
    num_docs: Optional[int] = None           # row count when known without reading (embedded, text files)
    ids: Optional[list[str]] = field(default=None, repr=False)  # all doc ids when known up front

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]


def _offline_defaults() -> None:
    # A hub lookup for a local path retries ~25 s before failing; local reads never need the hub.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _local_files(path: Path) -> list[Path]:
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in LOCAL_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(path).parts))  # skip hidden/caches
    if not files:
        raise ValueError(f"data.source: directory {str(path)!r} holds no {'/'.join(LOCAL_SUFFIXES)} files")
    kinds = {_kind(p) for p in files}
    if len(kinds) > 1 and all(p.suffix.lower() == ".md" for p in files if _kind(p) == "text"):
        # a downloaded dataset snapshot: README.md (the dataset card) beside data/*.parquet or *.jsonl
        files = [p for p in files if p.suffix.lower() != ".md"]
        kinds = {_kind(p) for p in files}
    if len(kinds) > 1:
        raise ValueError(f"data.source: {str(path)!r} mixes file kinds {sorted(kinds)}; use one of text, json, parquet")
    return files


def _kind(p: Path) -> str:
    s = p.suffix.lower()
    return "text" if s in (".txt", ".text", ".md") else "json" if s in (".jsonl", ".json") else "parquet"


def file_digest(path: Path, cache_dir: Path) -> str:
    """sha256 of a file, memoised by (path, size, mtime) so a second run does not re-read huge files."""
    st = path.stat()
    memo = Path(cache_dir) / "digests" / (hashlib.sha256(str(path).encode()).hexdigest()[:24] + ".json")
    if memo.exists():
        m = json.loads(memo.read_text())
        if m["size"] == st.st_size and m["mtime_ns"] == st.st_mtime_ns:
            return m["sha256"]
    digest = sha256_file(path)
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}))
    os.replace(tmp, memo)
    return digest


def _rows(stream, what: str) -> Iterator[dict]:
    """Rows of a `datasets` stream; any read error becomes one ValueError line naming the source."""
    it = iter(stream)
    while True:
        try:
            row = next(it)
        except StopIteration:
            return
        except Exception as e:  # datasets raises many types
            raise ValueError(f"{what} ({_one_line(e)})") from None
        yield row


def _stream_texts(open_stream: Callable[[], object], field_name: str, where: str, what: str,
                  max_documents: Optional[int], make_id: Callable[[int], str]) -> Iterator[Doc]:
    try:
        stream = open_stream()
    except Exception as e:
        raise ValueError(f"{what} ({_one_line(e)})") from None
    for i, row in enumerate(_rows(stream, what)):
        if max_documents and i >= max_documents:
            return
        if field_name not in row:
            raise ValueError(f"data.text_field: column {field_name!r} not in {where}; columns: {sorted(row)}")
        text = row[field_name]
        if text is not None and not isinstance(text, str):
            raise ValueError(f"data.text_field: column {field_name!r} of {where} holds {type(text).__name__} "
                             f"at row {i}, not text; point data.text_field at a string column")
        if text and text.strip():
            yield i, make_id(i), text


def local_source(cfg: DataConfig, cache_dir: Path) -> Source:
    """Local text (one document per file) or json/jsonl/parquet (one per row), streamed by `datasets`."""
    _offline_defaults()
    root = Path(cfg.source).expanduser().resolve()
    files = _local_files(root)
    kind = _kind(files[0])
    rel = (lambda f: str(f.relative_to(root))) if root.is_dir() else (lambda f: f.name)
    field_name = "text" if kind == "text" else cfg.text_field
    kwargs = {"sample_by": "document", "keep_linebreaks": True} if kind == "text" else {}

    def open_stream():
        import datasets
        return datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train", streaming=True,
                                     cache_dir=str(Path(cache_dir) / "hf_datasets"), **kwargs)

    if kind == "text":  # sample_by="document": one row per file, in data_files order
        ids = [rel(f) for f in files][: cfg.max_documents]
        make_id = ids.__getitem__
    else:
        prefix = rel(files[0]) if len(files) == 1 else "row"
        ids, make_id = None, (lambda i: f"{prefix}#{i}")
    records = [{"path": str(f), "bytes": f.stat().st_size, "sha256": file_digest(f, cache_dir)} for f in files]
    manifest = {"source": str(root), "kind": kind, "text_field": field_name, "files": records,
                "source_bytes": sum(r["bytes"] for r in records), "max_documents": cfg.max_documents}
    manifest["fingerprint"] = hashlib.sha256(json.dumps(
        ["local-v2", kind, field_name, [(rel(f), r["sha256"]) for f, r in zip(files, records)]]).encode()).hexdigest()
    what = f"data.source: could not read {str(root)!r} as {kind}"
    return Source(manifest, lambda: _stream_texts(open_stream, field_name, repr(str(root)), what,
                                                  cfg.max_documents, make_id),
                  num_docs=len(ids) if ids is not None else None, ids=ids)


def hub_source(cfg: DataConfig) -> Source:
    """A hub dataset `hf:<name>[:<config>]`, streamed (needs internet); nothing is read until iterated."""
    name, _, config = cfg.source[3:].partition(":")

    def open_stream():
        import datasets
        return datasets.load_dataset(name, config or None, split=cfg.hf_split, streaming=True)

    manifest = {"source": cfg.source, "kind": "hub", "split": cfg.hf_split, "text_field": cfg.text_field,
                "max_documents": cfg.max_documents, "files": []}
    manifest["fingerprint"] = hashlib.sha256(
        json.dumps(["hub-v2", name, config, cfg.hf_split, cfg.text_field]).encode()).hexdigest()
    what = f"data.source: could not stream hub dataset {cfg.source!r}"
    return Source(manifest, lambda: _hub_docs(open_stream, cfg, what))


def _hub_docs(open_stream, cfg: DataConfig, what: str) -> Iterator[Doc]:
    try:
        yield from _stream_texts(open_stream, cfg.text_field, repr(cfg.source), what, cfg.max_documents,
                                 lambda i: f"{cfg.hf_split}#{i}")
    except ValueError as e:
        if str(e).startswith("data.text_field"):
            raise
        raise ValueError(f"{e}; offline? point data.source at local files instead") from None


def embedded_source(cfg: DataConfig, cache_dir: Path) -> Source:
    if cfg.source == EMBEDDED_LARGE:
        from .extra_corpora import load_large_corpus
        emb = load_large_corpus(cache_dir)
    else:
        emb = load_embedded_corpus(cache_dir)
    docs = emb.docs[: cfg.max_documents] if cfg.max_documents else emb.docs
    manifest = dict(emb.manifest)
    manifest["max_documents"] = cfg.max_documents
    return Source(manifest, lambda: ((i, d, t) for i, (d, t) in enumerate(docs) if t and t.strip()),
                  num_docs=len(docs), ids=[d for d, _ in docs])


def load_source(cfg: DataConfig, cache_dir: Path) -> Source:
    if cfg.is_embedded:
        return embedded_source(cfg, cache_dir)
    if cfg.source.startswith("hf:"):
        return hub_source(cfg)
    return local_source(cfg, cache_dir)


def describe(source: Source, build: dict) -> dict:
    """Compact manifest for logging with a run: the source (minus per-file detail) and what was built."""
    out = {k: v for k, v in source.manifest.items() if k not in ("files", "dropped")}
    out["num_files"] = len(source.manifest.get("files", []))
    out.update({k: build[k] for k in ("num_documents", "bytes", "chars")})
    out["split"] = build["split"]
    out["build"] = {k: build[k] for k in ("max_tokens", "stopped_early", "chunks", "chunk_chars")}
    return out
