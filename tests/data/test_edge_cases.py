"""Data edge cases across shards, datamodule and sources: shard ids equal whole-document encoding for any pre-tokenizer,
literal special-token text is not a separator, eos_token keys the shard cache, a global batch must fit
the data in multi-process training, non-string text columns are a one-line error."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from mhc_repro.data.config import DataConfig
from mhc_repro.data.datamodule import LMDataModule
from mhc_repro.data.shards import _encode_batch
from mhc_repro.data.tokenizer import EOS_TOKEN, train_bpe

# The Llama-3 / cl100k family of split regexes (DeepSeek-V3's has the same "\s*[\r\n]+" and
# " ?[punct]+[\r\n]*" alternatives): "\n\n" and ".\n\n" are single pre-tokens.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def llama3_style_bpe(texts, vocab_size=500):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS_TOKEN], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return tok


def test_shard_ids_equal_whole_document_for_merging_pre_tokenizers(docs):
    tok = llama3_style_bpe(docs)
    text = "\n\n".join(docs)  # one long document: _pieces would cut it at paragraph breaks
    assert _encode_batch(tok, [text, docs[0]]) == [tok.encode(t, add_special_tokens=False).ids
                                                   for t in (text, docs[0])]


def test_literal_special_token_text_is_not_a_document_separator(docs):
    tok = train_bpe(docs, vocab_size=400)
    eos = tok.token_to_id(EOS_TOKEN)
    text = f"{docs[0]}\n\nThe card says: append {EOS_TOKEN} after each sample.\n\n{docs[1]}"
    (ids,) = _encode_batch(tok, [text])
    assert eos not in ids and tok.decode(ids) == text
    assert tok.encode_special_tokens is False  # the tokenizer is left as it was
    assert tok.encode(EOS_TOKEN, add_special_tokens=False).ids == [eos]


def test_eos_token_is_part_of_the_shard_cache_key(txt_dir, tmp_path, docs):
    tok = train_bpe(docs, vocab_size=400)
    tok.add_special_tokens(["<|other_eos|>"])
    tok.save(str(tmp_path / "tok.json"))
    seen = {}
    for eos in (EOS_TOKEN, "<|other_eos|>"):
        dm = LMDataModule(DataConfig(source=str(txt_dir), tokenizer=str(tmp_path / "tok.json"), eos_token=eos,
                                     seq_len=32, batch_size=2, cache_dir=str(tmp_path / "cache"))).prepare()
        tokens = np.asarray(dm.shards["train"].tokens())
        assert int((tokens == dm.eos_id).sum()) == dm.shards["train"].num_docs  # one separator per document
        seen[eos] = dm.manifest["shard_dir"]
    assert seen[EOS_TOKEN] != seen["<|other_eos|>"]


def _fake_trainer(world_size):
    return SimpleNamespace(global_rank=0, world_size=world_size,
                           _accelerator_connector=SimpleNamespace(use_distributed_sampler=False))


def test_multi_process_needs_one_global_batch_of_data(txt_dir, tmp_path):
    cfg = DataConfig(source=str(txt_dir), vocab_size=320, seq_len=32, batch_size=4, val_fraction=0.2,
                     cache_dir=str(tmp_path / "cache"))
    n = len(LMDataModule(cfg).prepare().train_dataset())
    fits = LMDataModule(DataConfig(**{**cfg.to_dict(), "batch_size": n // 2}))
    fits.trainer = _fake_trainer(2)
    fits.setup("fit")
    assert len(fits.train_dataloader()) == 1
    too_big = LMDataModule(DataConfig(**{**cfg.to_dict(), "batch_size": n // 2 + 1}))
    too_big.trainer = _fake_trainer(2)  # one rank's batch fits, the global batch does not
    with pytest.raises(ValueError, match=r"fewer than one optimizer step \(batch_size=\d+ x 2 processes"):
        too_big.setup("fit")


def test_non_string_text_column_is_one_line_error(tmp_path):
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("a fine document", 5)))
    dm = LMDataModule(DataConfig(source=str(src), vocab_size=300, cache_dir=str(tmp_path / "cache")))
    with pytest.raises(ValueError, match=r"column 'text' of .* holds int at row 1, not text") as err:
        dm.prepare()
    assert "\n" not in str(err.value)
