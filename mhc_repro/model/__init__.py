"""Framework-free decoder LM: RMSNorm, RoPE, attention (MHA + MLA), FFN (SwiGLU + MoE), class LM."""

from .cache import KVCache
from .params import count_params
from .transformer import LM

__all__ = ["LM", "KVCache", "count_params"]
