"""Data layer: embedded corpus, tokenizer, token shards and the LightningDataModule.

Import the heavy pieces lazily (`from mhc_repro.data.datamodule import LMDataModule`) if you only need
the config; importing this package pulls in lightning via the datamodule.
"""
from .config import DataConfig
from .corpus import CorpusFetchError, default_cache_dir, load_embedded_corpus
from .datamodule import LMDataModule
from .tokenizer import EOS_TOKEN

__all__ = ["DataConfig", "LMDataModule", "CorpusFetchError", "EOS_TOKEN", "default_cache_dir",
           "load_embedded_corpus"]
