"""Document sources behind DataConfig.source: embedded corpus, local files (via `datasets`), hub streams.

Every source becomes a `Corpus`: an ordered list of (doc id, text) plus a manifest saying what went
in and a fingerprint that keys the tokenizer and shard caches. Validation holds out whole documents.
"""
from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .config import EMBEDDED_LARGE, LOCAL_SUFFIXES, DataConfig
from .corpus import DEFAULT_VAL_DOCS, fingerprint_docs, load_embedded_corpus, sha256_file

SPLIT_VERSION = 1  # bump when the split rule changes


@dataclass
class Corpus:
    docs: list[tuple[str, str]]  # (doc id, text)
    manifest: dict               # includes "fingerprint"

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]


def _offline_defaults() -> None:
    # A hub lookup for a local path retries ~25 s before failing; local reads never need the hub.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _local_files(path: Path) -> list[Path]:
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in LOCAL_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(path).parts))  # skip hidden/caches
    if not files:
        raise ValueError(f"data.source: directory {str(path)!r} holds no {'/'.join(LOCAL_SUFFIXES)} files")
    kinds = {_kind(p) for p in files}
    if len(kinds) > 1:
        raise ValueError(f"data.source: {str(path)!r} mixes file kinds {sorted(kinds)}; use one of text, json, parquet")
    return files


def _kind(p: Path) -> str:
    s = p.suffix.lower()
    return "text" if s in (".txt", ".text", ".md") else "json" if s in (".jsonl", ".json") else "parquet"


def load_local(cfg: DataConfig, cache_dir: Path) -> Corpus:
    """Read local text (one document per file) or json/jsonl/parquet (one per row) with `datasets`."""
    _offline_defaults()
    import datasets

    root = Path(cfg.source).expanduser().resolve()
    files = _local_files(root)
    kind = _kind(files[0])
    kwargs = {"sample_by": "document", "keep_linebreaks": True} if kind == "text" else {}
    try:
        ds = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train",
                                   cache_dir=str(cache_dir / "hf_datasets"), **kwargs)
    except Exception as e:  # datasets raises many types; give one line naming the source
        raise ValueError(f"data.source: could not read {str(root)!r} as {kind}: {type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}") from None
    field = "text" if kind == "text" else cfg.text_field
    if field not in ds.column_names:
        raise ValueError(f"data.text_field: column {field!r} not in {str(root)!r}; columns: {ds.column_names}")
    texts = ds[field][: cfg.max_documents] if cfg.max_documents else ds[field]
    rel = (lambda f: str(f.relative_to(root))) if root.is_dir() else (lambda f: f.name)
    if kind == "text":  # sample_by="document": one row per file, in data_files order
        ids = [rel(f) for f in files][: len(texts)]
    else:
        ids = [f"{rel(files[0]) if len(files) == 1 else 'row'}#{i}" for i in range(len(texts))]
    docs = [(i, t) for i, t in zip(ids, texts) if t and t.strip()]
    manifest = {
        "source": str(root), "kind": kind, "text_field": field,
        "files": [{"path": str(f), "bytes": f.stat().st_size, "sha256": sha256_file(f)} for f in files],
        "num_documents": len(docs), "bytes": sum(len(t.encode()) for _, t in docs),
        "chars": sum(len(t) for _, t in docs), "max_documents": cfg.max_documents,
    }
    manifest["fingerprint"] = fingerprint_docs(docs, f"local-{kind}")
    return Corpus(docs, manifest)


def load_hub(cfg: DataConfig) -> Corpus:
    """Stream a hub dataset `hf:<name>[:<config>]` (needs internet; reads max_documents or everything)."""
    import datasets

    name, _, config = cfg.source[3:].partition(":")
    try:
        stream = datasets.load_dataset(name, config or None, split=cfg.hf_split, streaming=True)
        docs = []
        for i, row in enumerate(stream):
            if cfg.max_documents and i >= cfg.max_documents:
                break
            if row[cfg.text_field] and row[cfg.text_field].strip():
                docs.append((f"{cfg.hf_split}#{i}", row[cfg.text_field]))
    except Exception as e:
        raise ValueError(f"data.source: could not stream hub dataset {cfg.source!r} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); offline? point data.source at local "
                         f"files instead") from None
    manifest = {"source": cfg.source, "kind": "hub", "split": cfg.hf_split, "text_field": cfg.text_field,
                "num_documents": len(docs), "bytes": sum(len(t.encode()) for _, t in docs),
                "chars": sum(len(t) for _, t in docs), "max_documents": cfg.max_documents,
                "files": []}
    manifest["fingerprint"] = fingerprint_docs(docs, "hub")
    return Corpus(docs, manifest)


def load_corpus(cfg: DataConfig, cache_dir: Path) -> Corpus:
    if cfg.is_embedded:
        if cfg.source == EMBEDDED_LARGE:
            from .extra_corpora import load_large_corpus
            emb = load_large_corpus(cache_dir)
        else:
            emb = load_embedded_corpus(cache_dir)
        docs = emb.docs[: cfg.max_documents] if cfg.max_documents else emb.docs
        manifest = dict(emb.manifest)
        if cfg.max_documents:
            manifest["fingerprint"] = fingerprint_docs(docs, manifest["fingerprint"])
            manifest["max_documents"] = cfg.max_documents
        return Corpus(list(docs), manifest)
    if cfg.source.startswith("hf:"):
        return load_hub(cfg)
    return load_local(cfg, cache_dir)


def split_corpus(corpus: Corpus, cfg: DataConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]], dict]:
    """Hold out whole documents: (train docs, val docs, split record incl. a fingerprint).

    val_docs names them explicitly; else the embedded corpus holds out its pinned works; else a seeded
    random val_fraction of documents. A single-document source holds out its final val_fraction of
    paragraphs as one contiguous block (never scattered lines)."""
    docs = corpus.docs
    if cfg.val_docs is not None or (cfg.is_embedded and not cfg.max_documents):
        pinned = corpus.manifest.get("default_val_docs", DEFAULT_VAL_DOCS)
        wanted = list(cfg.val_docs if cfg.val_docs is not None else pinned)
        known = {d for d, _ in docs}
        missing = [w for w in wanted if w not in known]
        if missing:
            sample = ", ".join(sorted(known)[:5])
            raise ValueError(f"data.val_docs: unknown document id(s) {missing}; ids look like: {sample}, ...")
        val_set = set(wanted)
    elif cfg.val_fraction == 0 or not docs:
        val_set = set()
    elif len(docs) == 1:
        doc_id, text = docs[0]
        paras = text.split("\n\n")
        k = max(1, round(len(paras) * cfg.val_fraction)) if len(paras) > 1 else 0
        if k == 0:
            raise ValueError(f"data.source: single document {doc_id!r} has no blank-line paragraphs to hold out; "
                             "supply several documents or set data.val_fraction=0")
        train = [(f"{doc_id}[:-{k}]", "\n\n".join(paras[:-k]))]
        val = [(f"{doc_id}[-{k}:]", "\n\n".join(paras[-k:]))]
        return train, val, _record(corpus, train, val, cfg)
    else:
        k = max(1, round(len(docs) * cfg.val_fraction))
        order = list(range(len(docs)))
        random.Random(cfg.seed).shuffle(order)
        val_set = {docs[i][0] for i in order[:k]}
    train = [d for d in docs if d[0] not in val_set]
    val = [d for d in docs if d[0] in val_set]
    if not train:
        raise ValueError("data: every document is held out for validation; lower val_fraction or shorten val_docs")
    return train, val, _record(corpus, train, val, cfg)


def _record(corpus: Corpus, train: list, val: list, cfg: DataConfig) -> dict:
    ids = "\n".join(d for d, _ in val)
    fp = hashlib.sha256(f"{corpus.fingerprint}|split-v{SPLIT_VERSION}|{ids}|{len(train)}".encode()).hexdigest()
    return {"val_docs": [d for d, _ in val], "num_train_docs": len(train), "num_val_docs": len(val),
            "train_chars": sum(len(t) for _, t in train), "val_chars": sum(len(t) for _, t in val),
            "fingerprint": fp}


def describe(corpus: Corpus, split: Optional[dict] = None) -> dict:
    """Manifest for logging with a run (drops per-file detail the caller may log as an artifact)."""
    out = {k: v for k, v in corpus.manifest.items() if k not in ("files", "dropped")}
    out["num_files"] = len(corpus.manifest.get("files", []))
    if split:
        out["split"] = split
    return out
