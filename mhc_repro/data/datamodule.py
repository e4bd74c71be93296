"""LightningDataModule: source stream -> whole-document split -> tokenizer -> cached shards -> loaders.

    dm = LMDataModule(DataConfig(seq_len=256, batch_size=16), model_vocab_size=8192)
    dm.prepare()                    # or let Lightning call prepare_data()/setup()
    dm.tokenizer_path, dm.manifest, dm.tokens_per_epoch, dm.eos_id
    batch = next(iter(dm.train_dataloader()))   # (inputs [B,T], targets [B,T]) int64

Everything expensive is cached on disk (see corpus.py, tokenizer.py, build.py), so prepare() is
cheap after the first run and safe to call from every rank (builders of one cache take a file lock).
Building streams the source with bounded memory; data.max_tokens stops it at a token budget.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import lightning as L
from torch.utils.data import DataLoader

from .config import DataConfig
from .corpus import default_cache_dir
from .sampling import ResumableLoader, ResumableSampler
from .build import build_shards, shards_of
from .shards import PackedSequences, TokenShard, shard_key
from .sources import describe, load_source
from .split import plan_split
from .tokenizer import check_vocab, eos_id, load_tokenizer, sample_texts, tokenizer_fingerprint, trained_tokenizer


class LMDataModule(L.LightningDataModule):
    def __init__(self, cfg: DataConfig, model_vocab_size: Optional[int] = None, step_batch: Optional[int] = None):
        """step_batch: sequences per optimizer step (train.global_batch_size; None = one micro-batch per
        process): each epoch is cut to whole optimizer steps (ResumableSampler)."""
        super().__init__()
        self.cfg = cfg.validate()
        self.model_vocab_size = model_vocab_size
        self.step_batch = step_batch
        self.cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
        self.tokenizer = None
        self.tokenizer_path: Optional[Path] = None
        self.eos_id: Optional[int] = None
        self.manifest: dict[str, Any] = {}         # compact: log as params/tags with the run
        self.corpus_manifest: dict[str, Any] = {}  # full, with per-file records: log as an artifact
        self.timings: dict[str, float] = {}   # seconds per stage of this prepare() (cache hits are fast)
        self.shards: dict[str, TokenShard] = {}
        self._train_loader: Optional[ResumableLoader] = None
        self._rank, self._world = 0, 1

    # ---- building (idempotent, cached) -------------------------------------------------------
    def prepare(self) -> "LMDataModule":
        if self.shards:
            return self
        cfg = self.cfg
        t = time.perf_counter()
        source = load_source(cfg, self.cache_dir)   # cheap: nothing is read until iterated
        plan = plan_split(source, cfg)
        self.timings["corpus_s"] = time.perf_counter() - t

        t = time.perf_counter()
        if cfg.tokenizer is None:
            vocab = cfg.vocab_size or self.model_vocab_size
            if vocab is None:
                raise ValueError("data.vocab_size is None and no model vocab_size was given; set one of them")
            train_texts = (text for i, d, text in plan.docs(source) if not plan.is_val(i, d))
            sample = sample_texts(train_texts, cfg.tokenizer_sample_docs, cfg.tokenizer_sample_bytes)
            key = f"{plan.fingerprint}|sample:{cfg.tokenizer_sample_docs}:{cfg.tokenizer_sample_bytes}"
            tok, tok_path = trained_tokenizer(sample, vocab, key, self.cache_dir, cfg.eos_token)
        else:
            tok, tok_path = load_tokenizer(cfg.tokenizer, self.cache_dir)
        check_vocab(tok, self.model_vocab_size)
        self.eos_id = eos_id(tok, cfg.eos_token)
        self.timings["tokenizer_s"] = time.perf_counter() - t

        t = time.perf_counter()
        tok_fp = tokenizer_fingerprint(tok)
        out = self.cache_dir / "shards" / shard_key(f"{plan.fingerprint}|max_tokens:{cfg.max_tokens}", tok_fp,
                                                    self.eos_id)
        info = {"source": source.manifest.get("source"), "source_fingerprint": source.fingerprint,
                "tokenizer_fingerprint": tok_fp, "split": {**plan.spec, "fingerprint": plan.fingerprint}}
        built = build_shards(plan.docs(source), plan.is_val, tok, self.eos_id, out, max_tokens=cfg.max_tokens,
                             named_val=plan.named, info=info, desc=f"tokenizing {source.manifest.get('source')}")
        self.shards = shards_of(out, built)
        self.timings["shards_s"] = time.perf_counter() - t

        self.tokenizer, self.tokenizer_path = tok, tok_path
        self.corpus_manifest = source.manifest
        self.manifest = describe(source, built)
        self.manifest.update({
            "tokenizer": {"path": str(tok_path), "fingerprint": tok_fp, "eos_token": cfg.eos_token,
                          "vocab_size": tok.get_vocab_size(), "trained": cfg.tokenizer is None},
            "tokens": {k: s.num_tokens for k, s in self.shards.items()},
            "shard_dir": str(out), "seq_len": cfg.seq_len,
        })
        if len(self.train_dataset()) < cfg.batch_size:
            raise ValueError(f"data: only {len(self.train_dataset())} training sequences of seq_len={cfg.seq_len}, "
                             f"fewer than batch_size={cfg.batch_size}; use more text or smaller sizes")
        return self

    # ---- Lightning hooks ---------------------------------------------------------------------
    def prepare_data(self) -> None:
        # Runs on one process per node: fill the disk caches. Every rank then loads them in setup().
        LMDataModule(self.cfg, self.model_vocab_size).prepare()

    def setup(self, stage: Optional[str] = None) -> None:
        if self.trainer is not None:
            self._rank, self._world = self.trainer.global_rank, self.trainer.world_size
            connector = getattr(self.trainer, "_accelerator_connector", None)
            if self._world > 1 and getattr(connector, "use_distributed_sampler", False):
                # Lightning would swap in a DistributedSampler and lose the resumable position.
                raise ValueError("LMDataModule shards the data itself: create the Trainer with "
                                 "use_distributed_sampler=False for multi-process training")
        self.prepare()
        n, global_batch = len(self.train_dataset()), self.cfg.batch_size * self._world
        if n < max(global_batch, self.step_batch or 0):  # else every epoch is empty: fit() "finishes" with 0 steps
            raise ValueError(f"data: only {n} training sequences of seq_len={self.cfg.seq_len}, fewer than one "
                             f"optimizer step (batch_size={self.cfg.batch_size} x {self._world} processes = "
                             f"{global_batch}" + (f", global batch {self.step_batch}" if self.step_batch else "")
                             + "); use more text, a smaller batch/seq_len or fewer processes")

    def train_dataset(self) -> PackedSequences:
        return PackedSequences(self.shards["train"], self.cfg.seq_len)

    def val_dataset(self) -> Optional[PackedSequences]:
        return PackedSequences(self.shards["val"], self.cfg.seq_len) if "val" in self.shards else None

    def train_dataloader(self) -> ResumableLoader:
        self.prepare()
        if self._train_loader is None:  # one loader object, so its position survives reloads
            ds = self.train_dataset()
            sampler = ResumableSampler(len(ds), self.cfg.batch_size, self.cfg.seed, self._rank, self._world,
                                       step_batch=self.step_batch)
            self._train_loader = ResumableLoader(ds, sampler, num_workers=self.cfg.num_workers,
                                                 persistent_workers=self.cfg.num_workers > 0)
        return self._train_loader

    def val_dataloader(self) -> DataLoader | list:
        self.prepare()
        ds = self.val_dataset()
        if ds is None or len(ds) == 0:
            if self.cfg.val_fraction > 0 or self.cfg.val_docs:
                from lightning.pytorch.utilities import rank_zero_warn

                held = self.shards["val"].num_tokens if "val" in self.shards else 0
                rank_zero_warn(f"data: the validation set holds {held} tokens, fewer than one sequence of "
                               f"seq_len + 1 = {self.cfg.seq_len + 1}: no validation loss will be logged "
                               "(raise data.max_tokens or data.val_fraction; val_fraction=0 silences this)")
            return []
        # Every rank evaluates the whole (small) validation set; Lightning syncs the logged mean.
        return DataLoader(ds, batch_size=self.cfg.val_batch_size or self.cfg.batch_size, shuffle=False,
                          num_workers=self.cfg.num_workers)

    # ---- facts for logging -------------------------------------------------------------------
    @property
    def tokens_per_epoch(self) -> int:
        """Training tokens (targets) seen per epoch across all ranks."""
        self.prepare()
        step = self.step_batch or self.cfg.batch_size * self._world
        return len(self.train_dataset()) // step * step * self.cfg.seq_len
