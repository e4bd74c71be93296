import numpy as np
import pytest
import torch

from mhc_repro.data import shards
from mhc_repro.data.shards import PackedSequences, _encode_batch, _pieces, build_shard
from mhc_repro.data.tokenizer import eos_id, train_bpe


@pytest.fixture
def tok(docs):
    return train_bpe(docs, vocab_size=400)


def test_piecewise_encoding_equals_whole_document(tok, docs):
    text = docs[0] + "\n\n  indented after a break\n\n\nthree newlines\n\nend"
    assert "".join(_pieces(text, target=10)) == text and len(_pieces(text, target=10)) > 3
    assert _encode_batch(tok, [text, ""]) == [tok.encode(text, add_special_tokens=False).ids, []]


def test_shard_contents_and_cache_hit(tok, docs, tmp_path, monkeypatch):
    eos = eos_id(tok)
    s = build_shard(iter(docs), tok, eos, tmp_path, "train")
    toks = np.asarray(s.tokens())
    assert s.dtype == "uint16" and s.num_docs == len(docs) and toks.size == s.num_tokens
    expected = []
    for d in docs:
        expected += tok.encode(d).ids + [eos]
    assert toks.tolist() == expected  # documents joined, each followed by EOS

    def no_tokenizing(*a, **k):
        raise RuntimeError("re-tokenised despite cached shard")

    monkeypatch.setattr(shards, "_encode_batch", no_tokenizing)
    again = build_shard(iter(docs), tok, eos, tmp_path, "train")
    assert again == s
    with pytest.raises(RuntimeError, match="re-tokenised"):  # another split name is not cached
        build_shard(iter(docs), tok, eos, tmp_path, "val")


def test_packing_shapes_and_alignment(tok, docs, tmp_path):
    s = build_shard(iter(docs), tok, eos_id(tok), tmp_path, "train")
    T = 32
    ds = PackedSequences(s, T)
    assert len(ds) == (s.num_tokens - 1) // T
    toks = torch.from_numpy(np.asarray(s.tokens()).astype(np.int64))
    x0, y0 = ds[0]
    x1, _ = ds[1]
    assert x0.shape == y0.shape == (T,) and x0.dtype == torch.int64
    assert torch.equal(y0[:-1], x0[1:]) and y0[-1] == x1[0]          # targets are inputs shifted by one
    xl, yl = ds[len(ds) - 1]
    assert torch.equal(torch.cat([xl, yl[-1:]]), toks[(len(ds) - 1) * T: len(ds) * T + 1])
    with pytest.raises(IndexError):
        ds[len(ds)]
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    assert batch[0].shape == (4, T)
