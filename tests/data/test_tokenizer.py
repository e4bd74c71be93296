import json

import pytest

from mhc_repro.data import tokenizer as tk
from mhc_repro.data.tokenizer import EOS_TOKEN, check_vocab, eos_id, load_tokenizer, trained_tokenizer, train_bpe


def test_bpe_trains_and_round_trips(docs):
    tok = train_bpe(docs, vocab_size=512)
    assert 300 < tok.get_vocab_size() <= 512
    assert eos_id(tok) == tok.token_to_id(EOS_TOKEN) == 0
    for text in [docs[0], "  leading spaces,\ttabs\nand newlines\n\n", "café naïve — “quotes” 中文 🙂", ""]:
        ids = tok.encode(text).ids
        assert tok.decode(ids) == text
    # Common words compress: far fewer tokens than bytes.
    assert len(tok.encode(docs[0]).ids) < len(docs[0].encode()) / 2.5
    # The special token is one id inside text.
    assert tok.encode(f"a{EOS_TOKEN}b").ids.count(eos_id(tok)) == 1


def test_trained_tokenizer_is_cached(docs, tmp_path, monkeypatch):
    tok, path = trained_tokenizer(iter(docs), 400, "corpus-A", tmp_path)
    assert path.exists() and "v400" in path.name
    def no_training(*a, **k):
        raise RuntimeError("retrained despite cache")

    monkeypatch.setattr(tk, "train_bpe", no_training)
    tok2, path2 = trained_tokenizer(iter(docs), 400, "corpus-A", tmp_path)
    assert path2 == path and tok2.to_str() == tok.to_str()
    with pytest.raises(RuntimeError, match="retrained"):  # another corpus key is a cache miss
        trained_tokenizer(iter(docs), 400, "corpus-B", tmp_path)


def test_load_from_file_and_directory(docs, tmp_path):
    tok = train_bpe(docs, vocab_size=300)
    tok.save(str(tmp_path / "tokenizer.json"))
    a, pa = load_tokenizer(str(tmp_path / "tokenizer.json"), tmp_path)
    b, pb = load_tokenizer(str(tmp_path), tmp_path)
    assert a.to_str() == b.to_str() == tok.to_str() and pa == pb


@pytest.mark.parametrize("spec,match", [
    ("/nope/tokenizer.json", "does not exist"),
    ("no-such-org/no-such-tokenizer", "could not be fetched"),
])
def test_bad_tokenizer_specs_fail_in_one_line(spec, match, tmp_path):
    with pytest.raises(ValueError, match=match) as e:
        load_tokenizer(spec, tmp_path)
    assert "\n" not in str(e.value)


def test_not_json_and_empty_dir(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps({"not": "a tokenizer"}))
    with pytest.raises(ValueError, match="not a HF tokenizers JSON"):
        load_tokenizer(str(tmp_path / "bad.json"), tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="has no tokenizer.json"):
        load_tokenizer(str(tmp_path / "empty"), tmp_path)


def test_vocab_checks(docs):
    tok = train_bpe(docs, vocab_size=300)
    n = tok.get_vocab_size()
    check_vocab(tok, n)
    check_vocab(tok, None)
    with pytest.raises(ValueError, match=f"tokenizer has {n} tokens but model.vocab_size is {n - 1}"):
        check_vocab(tok, n - 1)
    with pytest.raises(ValueError, match="not in the tokenizer"):
        eos_id(tok, "</s>")


def test_training_is_deterministic(docs):
    # Ranks that each train the cached tokenizer must agree byte for byte.
    assert train_bpe(docs, vocab_size=400).to_str() == train_bpe(list(docs), vocab_size=400).to_str()
