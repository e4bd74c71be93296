"""Data layer: embedded corpus, tokenizer, token shards and the LightningDataModule.

`LMDataModule` is imported lazily so that `from mhc_repro.data import DataConfig` stays free of lightning.
"""
from .config import DataConfig
from .corpus import CorpusFetchError, default_cache_dir, load_embedded_corpus
from .tokenizer import EOS_TOKEN

__all__ = ["DataConfig", "LMDataModule", "CorpusFetchError", "EOS_TOKEN", "default_cache_dir",
           "load_embedded_corpus"]


def __getattr__(name: str):
    if name == "LMDataModule":
        from .datamodule import LMDataModule
        return LMDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
