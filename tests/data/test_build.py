"""Streaming shard build: chunked == one-shot, token budget, crash safety, bounded chunks, dtypes."""
import json

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from mhc_repro.data import build, shards
from mhc_repro.data.build import build_shards, load_built
from mhc_repro.data.config import DataConfig
from mhc_repro.data.datamodule import LMDataModule
from mhc_repro.data.shards import ShardWriter, token_dtype
from mhc_repro.data.tokenizer import eos_id, sample_texts, train_bpe

EVERY_5TH = lambda i, doc_id: i % 5 == 0  # noqa: E731


DOCS = []  # filled once by the `tok` fixture: 40 documents of ~2 KB


@pytest.fixture(scope="module", autouse=True)
def tok(doc_maker):
    DOCS[:] = doc_maker(40, sentences_per_doc=24, seed=3)
    return train_bpe(DOCS, vocab_size=400)


def stream(fail_after=None, pulled=None):
    for i, text in enumerate(DOCS):
        if fail_after is not None and i == fail_after:
            raise RuntimeError("source died mid-build")
        if pulled is not None:
            pulled.append(i)
        yield i, f"d#{i}", text


def tokens(out_dir, name):
    m = load_built(out_dir)["shards"][name]
    return np.fromfile(out_dir / f"{name}.bin", dtype=m["dtype"]).tolist()


def test_chunked_build_equals_one_shot(tok, tmp_path):
    e = eos_id(tok)
    small = build_shards(stream(), EVERY_5TH, tok, e, tmp_path / "small", chunk_chars=5000, info={"x": 1})
    whole = build_shards(stream(), EVERY_5TH, tok, e, tmp_path / "whole", chunk_chars=10 ** 9)
    assert small["chunks"] >= 20 and whole["chunks"] == 1 and small["x"] == 1
    for name in ("train", "val"):
        assert tokens(tmp_path / "small", name) == tokens(tmp_path / "whole", name)
    expected = []
    for i, d in enumerate(DOCS):
        if i % 5:
            expected += tok.encode(d).ids + [e]
    assert tokens(tmp_path / "small", "train") == expected
    assert small["split"]["num_val_docs"] == 8 and small["split"]["val_docs"][:2] == ["d#0", "d#5"]
    assert small["dtype"] == "uint16" and small["shards"]["train"]["num_tokens"] == len(expected)


@pytest.mark.parametrize("chunk", [3000, 10 ** 9])
def test_max_tokens_stops_at_the_same_document_whatever_the_chunk(tok, tmp_path, chunk):
    e = eos_id(tok)
    build_shards(stream(), EVERY_5TH, tok, e, tmp_path / "full", chunk_chars=chunk)
    tokens_full = tokens(tmp_path / "full", "train")
    full = load_built(tmp_path / "full")
    budget = len(tokens_full) // 3
    m = build_shards(stream(), EVERY_5TH, tok, e, tmp_path / "cut", max_tokens=budget, chunk_chars=chunk)
    cut = tokens(tmp_path / "cut", "train")
    assert m["stopped_early"] and not full["stopped_early"] and m["max_tokens"] == budget
    assert len(cut) > budget and cut == tokens_full[: len(cut)] and cut[-1] == e
    last_doc = len(tok.encode(DOCS[m["split"]["num_train_docs"] + m["split"]["num_val_docs"] - 1]).ids) + 1
    assert len(cut) - last_doc <= budget      # stopped right after the document that crossed the budget
    assert m["num_documents"] < full["num_documents"]


@pytest.mark.parametrize("chunk", [3000, 10 ** 9])
def test_named_held_out_docs_do_not_depend_on_the_budget(tok, tmp_path, chunk):
    """Held-out documents named up front (the embedded corpus's pinned works) are read even when they
    lie past the training budget: the validation set is the same whatever max_tokens and chunking."""
    e = eos_id(tok)
    named = ["d#3", "d#38"]
    is_named = lambda i, doc_id: doc_id in named  # noqa: E731
    full = build_shards(stream(), is_named, tok, e, tmp_path / "full", chunk_chars=chunk, named_val=named)
    budget = full["shards"]["train"]["num_tokens"] // 4
    pulled = []
    cut = build_shards(stream(pulled=pulled), is_named, tok, e, tmp_path / "cut", max_tokens=budget,
                       chunk_chars=chunk, named_val=named)
    assert cut["stopped_early"] and cut["split"]["val_docs"] == named
    assert tokens(tmp_path / "cut", "val") == tokens(tmp_path / "full", "val")
    assert len(tokens(tmp_path / "cut", "train")) - budget < len(tokens(tmp_path / "full", "train")) // 4
    if chunk == 3000:  # (one big chunk reads the whole stream before the first flush)
        assert pulled[-1] == 38  # read on to the last named document, not to the end of the stream
    with pytest.raises(ValueError, match=r"d#99.*not found"):
        build_shards(stream(), lambda i, d: d in ("d#3", "d#99"), tok, e, tmp_path / "missing",
                     max_tokens=budget, chunk_chars=chunk, named_val=["d#3", "d#99"])


def test_interrupted_build_leaves_nothing_trusted(tok, tmp_path):
    e, out = eos_id(tok), tmp_path / "shards" / "key"
    with pytest.raises(RuntimeError, match="died"):
        build_shards(stream(fail_after=30), EVERY_5TH, tok, e, out, chunk_chars=4000)
    assert not out.exists() and load_built(out) is None
    assert [p.name for p in out.parent.iterdir()] == ["key.lock"]   # temp dir removed
    # A build killed without cleanup (SIGKILL) leaves a temp dir; a manifest-less target is not trusted.
    (out.parent / "key.tmp-dead").mkdir()
    (out.parent / "key.tmp-dead" / "train.bin").write_bytes(b"junk")
    out.mkdir()
    (out / "train.bin").write_bytes(b"half")
    m = build_shards(stream(), EVERY_5TH, tok, e, out, chunk_chars=4000)
    build_shards(stream(), EVERY_5TH, tok, e, tmp_path / "ref")
    assert tokens(out, "train") == tokens(tmp_path / "ref", "train") and m["num_documents"] == 40
    assert sorted(p.name for p in out.parent.iterdir()) == ["key", "key.lock"]


def test_builder_holds_at_most_one_chunk(tok, tmp_path, monkeypatch):
    pulled, calls = [], []
    real = shards._encode_batch

    def spy(tokenizer, texts):
        encoded_before = sum(c["docs"] for c in calls)
        calls.append({"docs": len(texts), "chars": sum(map(len, texts)), "in_hand": len(pulled) - encoded_before})
        return real(tokenizer, texts)

    monkeypatch.setattr(shards, "_encode_batch", spy)
    chunk = 8000
    build_shards(stream(pulled=pulled), EVERY_5TH, tok, eos_id(tok), tmp_path / "s", chunk_chars=chunk)
    longest = max(map(len, DOCS))
    assert len(calls) >= 10 and sum(c["docs"] for c in calls) == len(DOCS)
    for c in calls:
        assert c["in_hand"] == c["docs"]                 # documents are pulled lazily, one chunk at a time
        assert c["chars"] < chunk + longest              # a chunk closes at the first document past the limit


def test_uint32_when_vocab_exceeds_uint16(tmp_path):
    big = Tokenizer(models.WordLevel({"a": 0, "b": 70_000, "<|endoftext|>": 70_001}, unk_token="a"))
    big.pre_tokenizer = pre_tokenizers.Whitespace()
    assert token_dtype(big) == np.uint32
    m = build_shards(iter([(0, "x", "a b b"), (1, "y", "b")]), lambda i, d: False, big, 70_001, tmp_path / "b")
    assert m["dtype"] == "uint32" and tokens(tmp_path / "b", "train") == [0, 70_000, 70_000, 70_001, 70_000, 70_001]
    assert "val" not in m["shards"] and not (tmp_path / "b" / "val.bin").exists()
    w = ShardWriter(tmp_path / "w.bin", np.uint16, 7)
    w.append([1, 2])
    w.abort()
    assert not (tmp_path / "w.bin").exists()


def test_sample_texts_limits():
    texts = ["aaaa", "bb", "cccccc"]
    assert list(sample_texts(texts)) == texts
    assert list(sample_texts(texts, max_docs=2)) == ["aaaa", "bb"]
    assert list(sample_texts(texts, max_bytes=8)) == ["aaaa", "bb", "cc"]
    assert list(sample_texts(iter(["é" * 3]), max_bytes=3)) == ["é"]  # never a broken UTF-8 sequence


# ---- end to end through the DataModule: a streamed jsonl source ---------------------------------------

def _jsonl(tmp_path, make_docs, n=60):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in make_docs(n, sentences_per_doc=16, seed=5)))
    tok = train_bpe(make_docs(8, seed=9), vocab_size=350)
    tok.save(str(tmp_path / "tokenizer.json"))
    return path


def _dm(path, tmp_path, cache, **kw):
    cfg = DataConfig(source=str(path), tokenizer=str(tmp_path / "tokenizer.json"), cache_dir=str(tmp_path / cache),
                     seq_len=16, batch_size=2, val_fraction=0.1, **kw)
    return LMDataModule(cfg, model_vocab_size=350).prepare()


def test_jsonl_source_streams_in_flushes_like_one_shot(tmp_path, monkeypatch, doc_maker):
    path = _jsonl(tmp_path, doc_maker)
    one = _dm(path, tmp_path, "one")
    monkeypatch.setattr(build, "CHUNK_CHARS", 3000)
    many = _dm(path, tmp_path, "many")
    assert one.manifest["build"]["chunks"] == 1 and many.manifest["build"]["chunks"] > 5
    for name in ("train", "val"):
        assert many.shards[name].tokens().tolist() == one.shards[name].tokens().tolist()
    split = many.manifest["split"]
    assert split["rule"] == "hash" and 1 <= split["num_val_docs"] < 20 and split["num_train_docs"] + split["num_val_docs"] == 60
    on_disk = json.loads((many.shards["train"].path.parent / "manifest.json").read_text())
    assert on_disk["source_fingerprint"] and on_disk["tokenizer_fingerprint"] == many.manifest["tokenizer"]["fingerprint"]
    assert on_disk["shards"]["train"]["num_tokens"] == many.manifest["tokens"]["train"]
    # Another seed holds out other documents of the stream (same rule, deterministic per seed).
    other = _dm(path, tmp_path, "many", seed=7)
    assert other.manifest["split"]["val_docs"] != split["val_docs"]
    assert _dm(path, tmp_path, "one", seed=7).manifest["split"]["val_docs"] == other.manifest["split"]["val_docs"]


def test_datamodule_budget_and_crash_then_clean_rebuild(tmp_path, monkeypatch, doc_maker):
    path = _jsonl(tmp_path, doc_maker)
    full = _dm(path, tmp_path, "c")
    monkeypatch.setattr(build, "CHUNK_CHARS", 2000)
    budget = full.manifest["tokens"]["train"] // 2
    cut = _dm(path, tmp_path, "c", max_tokens=budget)
    assert cut.manifest["build"]["stopped_early"] and budget < cut.manifest["tokens"]["train"] < full.manifest["tokens"]["train"]
    assert cut.shards["train"].path.parent != full.shards["train"].path.parent   # the budget is in the cache key

    real, calls = shards._encode_batch, []

    def dies_on_third(tokenizer, texts):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(tokenizer, texts)

    monkeypatch.setattr(shards, "_encode_batch", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        _dm(path, tmp_path, "c", max_tokens=budget + 1)
    again = _dm(path, tmp_path, "c", max_tokens=budget + 1)   # rebuilt from scratch, not half a shard
    assert len(calls) > 3 and again.manifest["tokens"]["train"] == cut.manifest["tokens"]["train"]
    assert again.shards["train"].tokens().tolist() == cut.shards["train"].tokens().tolist()


@pytest.mark.parametrize("kw,match", [
    ({"max_tokens": 0}, "data.max_tokens must be a positive integer or None, got 0"),
    ({"tokenizer_sample_bytes": -1}, "data.tokenizer_sample_bytes must be a positive integer"),
    ({"max_documents": 2.5}, "data.max_documents must be a positive integer"),
])
def test_budget_options_are_validated(kw, match):
    with pytest.raises(ValueError, match=match):
        DataConfig(**kw).validate()


def test_hub_source_is_streamed_lazily_and_cached(tmp_path, monkeypatch, doc_maker):
    """A fake hub stream: read lazily up to the budget, sampled for the BPE, not opened on a cache hit."""
    import datasets

    texts = doc_maker(200, sentences_per_doc=8, seed=11)
    opened, pulled = [], []

    def fake_load_dataset(name, config=None, split=None, streaming=False, **kw):
        opened.append((name, config, split, streaming))

        def rows():
            for i, t in enumerate(texts):
                pulled.append(i)
                yield {"text": "" if i == 3 else t}
        return rows()

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(build, "CHUNK_CHARS", 2000)   # a chunk is tiny next to the source, as at scale
    cfg = DataConfig(source="hf:org/web:sample", vocab_size=300, seq_len=16, batch_size=2, val_fraction=0.1,
                     max_tokens=5000, tokenizer_sample_docs=20, cache_dir=str(tmp_path / "cache"))
    dm = LMDataModule(cfg, model_vocab_size=300).prepare()
    assert opened == [("org/web", "sample", "train", True)] * 2          # BPE sample pass + build pass
    sample_pass = pulled.index(0, 1)                                     # rows read before the 2nd open
    assert sample_pass <= 25                                             # ~20 training docs, not the source
    assert len(pulled) - sample_pass < 60                                # the build stopped at the budget
    m = dm.manifest
    assert m["kind"] == "hub" and m["build"]["stopped_early"] and m["tokens"]["train"] > 5000
    assert m["split"]["rule"] == "hash" and "train#3" not in m["split"]["val_docs"]
    opened.clear()
    again = LMDataModule(cfg, model_vocab_size=300).prepare()
    assert opened == [] and again.manifest == m                          # cache hit: the hub is not touched


def test_build_without_file_locks_still_commits_once(tok, tmp_path, monkeypatch):
    """Filesystems without flock: a builder that loses the final rename adopts the winner's build."""
    def no_flock(*a):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(build.fcntl, "flock", no_flock)
    out = tmp_path / "k"
    first = build_shards(stream(), EVERY_5TH, tok, eos_id(tok), out)
    real, calls = build.load_built, []

    def committed_meanwhile(d):  # the first two checks miss the build another process commits meanwhile
        calls.append(d)
        return None if len(calls) <= 2 else real(d)

    monkeypatch.setattr(build, "load_built", committed_meanwhile)
    second = build_shards(stream(), EVERY_5TH, tok, eos_id(tok), out)   # races: builds, then finds `out` taken
    assert second == first and sorted(p.name for p in tmp_path.iterdir()) == ["k", "k.lock"]
