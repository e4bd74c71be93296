"""Typed model configuration: ModelConfig with nested AttentionConfig, MoEConfig and ResidualConfig.

Every field has a docstring (litgpt style). ``to_dict()``/``from_dict()`` round-trip the whole nested
tree through plain dicts (the ``model`` key of a run's ``config.yaml``); ``validate()`` raises a
one-line ``ValueError`` naming the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from mhc_repro.residual.config import ResidualConfig

__all__ = ["AttentionConfig", "MoEConfig", "ModelConfig", "ResidualConfig"]


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


def _pos_number(v: Any) -> bool:
    """A finite number > 0 (not a bool, not a string such as YAML 1.1's '1e-6')."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _from_dict(cls, d: dict[str, Any], where: str):
    """Build dataclass ``cls`` from ``d``, rejecting unknown keys with a one-line error."""
    if isinstance(d, cls):
        return d
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(names)}")
    return cls(**d)


@dataclass
class AttentionConfig:
    kind: Literal["mha", "mla"] = "mha"
    """``"mha"``: Llama-style multi-head attention (RoPE on the whole head); ``"mla"``: DeepSeek-V3
    multi-head latent attention (low-rank KV with a decoupled RoPE key)."""
    n_heads: int = 4
    """Number of query heads."""
    head_dim: int = 32
    """MHA: the per-head q/k/v size. MLA: the per-head *non-rotary* q/k size (DeepSeek's
    ``qk_nope_head_dim``); the rotary part adds ``rope_dim`` on top."""
    n_kv_heads: int = 0
    """MHA only: key/value heads for grouped-query attention; 0 = ``n_heads`` (plain MHA)."""
    kv_lora_rank: int = 0
    """MLA only: rank of the compressed KV latent (Table 5: 512)."""
    q_lora_rank: int = 0
    """MLA only: rank of the query down-projection; 0 = no query LoRA (a full C -> H*(head_dim+rope_dim)
    projection). Table 5 does not state it; 0 reproduces the paper's parameter counts."""
    rope_dim: int = 0
    """MLA only: per-head size of the decoupled rotary q/k part (Table 5: 64). MHA rotates the whole head."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    v_head_dim: int = 0
    """MLA only: per-head value size; 0 = ``head_dim``."""

    @property
    def v_dim(self) -> int:
        """Effective per-head value size."""
        return self.v_head_dim or self.head_dim

    @property
    def kv_heads(self) -> int:
        """Effective number of key/value heads (MHA)."""
        return self.n_kv_heads or self.n_heads

    def validate(self) -> None:
        _check(self.kind in ("mha", "mla"), f"attention.kind={self.kind!r}; allowed: 'mha', 'mla'")
        for name in ("n_heads", "head_dim"):
            v = getattr(self, name)
            _check(isinstance(v, int) and v > 0, f"attention.{name}={v!r}; must be a positive int")
        for name in ("n_kv_heads", "kv_lora_rank", "q_lora_rank", "rope_dim", "v_head_dim"):
            v = getattr(self, name)
            _check(isinstance(v, int) and v >= 0, f"attention.{name}={v!r}; must be an int >= 0")
        _check(_pos_number(self.rope_theta), f"attention.rope_theta={self.rope_theta!r}; must be a number > 0")
        if self.kind == "mha":
            _check(self.head_dim % 2 == 0, f"attention.head_dim={self.head_dim}; must be even (RoPE)")
            _check(self.n_heads % self.kv_heads == 0,
                   f"attention.n_kv_heads={self.n_kv_heads}; must divide n_heads={self.n_heads}")
        else:
            _check(self.kv_lora_rank > 0, f"attention.kv_lora_rank={self.kv_lora_rank}; MLA needs > 0")
            _check(self.rope_dim > 0 and self.rope_dim % 2 == 0,
                   f"attention.rope_dim={self.rope_dim}; MLA needs a positive even int")


@dataclass
class MoEConfig:
    n_routed: int = 64
    """Number of routed experts."""
    n_active_routed: int = 6
    """Routed experts chosen per token (top-k)."""
    n_shared: int = 2
    """Shared experts every token passes through (implemented as one SwiGLU of width
    ``n_shared * expert_width``: the same function and parameter count as separate experts)."""
    expert_width: int = 896
    """Hidden width of each (SwiGLU) expert."""
    n_dense_blocks: int = 1
    """Leading blocks that use a dense SwiGLU FFN (width ``ModelConfig.dense_ffn_width``) instead of MoE."""
    score_func: Literal["sigmoid", "softmax"] = "sigmoid"
    """Router affinity: DeepSeek-V3 ``"sigmoid"`` (gates normalised over the selected experts) or
    ``"softmax"`` (gates = the selected softmax probabilities, not renormalised)."""
    bias_update_rate: float = 1e-3
    """Auxiliary-loss-free balancing step: ``bias += rate * sign(mean_load - load)`` per
    ``update_routing_bias()`` call (DeepSeek-V3's gamma). 0 disables balancing."""
    route_scale: float = 1.0
    """Multiplier on the routed gates (DeepSeek-V3's ``route_scale``)."""
    dispatch: Literal["auto", "loop", "bmm", "grouped"] = "auto"
    """How the routed experts run (all exact, same result): ``"grouped"`` = one ``torch._grouped_mm``
    per projection over the jagged per-expert groups, no host sync (bf16 on CUDA; falls back to
    ``"bmm"`` if it raises); ``"bmm"`` = groups padded to the largest, one ``torch.bmm`` per projection
    (one host sync per layer); ``"loop"`` = one matmul group per expert (reference, slow on GPU);
    ``"auto"`` = ``"grouped"`` on CUDA sm90+ (H100/H200) under bf16, else ``"bmm"``."""
    shuffle: Literal["index_add", "gather"] = "gather"
    """How tokens move to their experts and back (``model/moe_shuffle.py``; same values up to fp32
    summation order): ``"gather"`` = gathers both ways through the inverse permutation, each token's k
    slots summed in fp32 (no atomics, the same bits every run); ``"index_add"`` = an index_select whose
    backward is a scatter-add, and a scatter-add combine (atomic adds on CUDA, bf16 ones in the
    backward on a bf16 stream: the rounding follows the order they land in; the backward's is an
    unfused ATen kernel: 5.9 ms of a 3B step on an fp32 stream, 11.6 ms on a bf16 one,
    reports/kernels/RESULTS.md "Session 19").
    [implementation choice, not in the paper]"""

    def validate(self) -> None:
        for name in ("n_routed", "n_active_routed", "expert_width"):
            v = getattr(self, name)
            _check(isinstance(v, int) and v > 0, f"moe.{name}={v!r}; must be a positive int")
        for name in ("n_shared", "n_dense_blocks"):
            v = getattr(self, name)
            _check(isinstance(v, int) and v >= 0, f"moe.{name}={v!r}; must be an int >= 0")
        _check(self.n_active_routed <= self.n_routed,
               f"moe.n_active_routed={self.n_active_routed}; must be <= n_routed={self.n_routed}")
        _check(self.score_func in ("sigmoid", "softmax"),
               f"moe.score_func={self.score_func!r}; allowed: 'sigmoid', 'softmax'")
        _check(_pos_number(self.bias_update_rate) or self.bias_update_rate == 0,
               f"moe.bias_update_rate={self.bias_update_rate!r}; must be a number >= 0")
        _check(_pos_number(self.route_scale), f"moe.route_scale={self.route_scale!r}; must be a number > 0")
        _check(self.dispatch in ("auto", "loop", "bmm", "grouped"),
               f"moe.dispatch={self.dispatch!r}; allowed: 'auto', 'loop', 'bmm', 'grouped'")
        _check(self.shuffle in ("index_add", "gather"),
               f"moe.shuffle={self.shuffle!r}; allowed: 'index_add', 'gather'")


@dataclass
class ModelConfig:
    vocab_size: int = 8192
    """Vocabulary size (embedding rows = head columns; embedding and head are untied)."""
    d_model: int = 128
    """Hidden size C of the residual stream (each of the n streams has width C)."""
    n_blocks: int = 4
    """Transformer blocks; each has two sub-layers (attention, FFN), each with its own residual wrapper."""
    max_seq_len: int = 256
    """Training context length (RoPE is computed on the fly, so longer KV caches still work)."""
    norm_eps: float = 1e-6
    """RMSNorm epsilon (Table 5: 1e-20)."""
    init_std: float = 0.02
    """Std of the normal init of every linear/embedding weight; output projections are additionally
    multiplied by the residual variant's output-init factor."""
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    """Attention sub-layer."""
    ffn: Literal["dense", "moe"] = "dense"
    """FFN sub-layer: ``"dense"`` SwiGLU everywhere, or ``"moe"`` (after ``moe.n_dense_blocks`` dense blocks)."""
    dense_ffn_width: int = 512
    """Hidden width of the dense SwiGLU FFN (all blocks if ``ffn="dense"``, the leading blocks if ``"moe"``)."""
    moe: MoEConfig = field(default_factory=MoEConfig)
    """MoE settings (used only when ``ffn="moe"``)."""
    residual: ResidualConfig = field(default_factory=ResidualConfig)
    """Residual variant (Pre-Norm residual, HC or mHC) and its options."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in backward (saves memory; MoE load counts then double,
    which the sign-based bias update ignores)."""

    def validate(self) -> "ModelConfig":
        for name in ("vocab_size", "d_model", "n_blocks", "max_seq_len", "dense_ffn_width"):
            v = getattr(self, name)
            _check(isinstance(v, int) and not isinstance(v, bool) and v > 0,
                   f"{name}={v!r}; must be a positive int")
        _check(_pos_number(self.norm_eps), f"norm_eps={self.norm_eps!r}; must be a number > 0")
        _check(_pos_number(self.init_std), f"init_std={self.init_std!r}; must be a number > 0")
        _check(self.ffn in ("dense", "moe"), f"ffn={self.ffn!r}; allowed: 'dense', 'moe'")
        _check(isinstance(self.activation_checkpointing, bool),
               f"activation_checkpointing={self.activation_checkpointing!r}; must be true/false")
        self.attention.validate()
        if self.ffn == "moe":
            self.moe.validate()
            _check(self.moe.n_dense_blocks <= self.n_blocks,
                   f"moe.n_dense_blocks={self.moe.n_dense_blocks}; must be <= n_blocks={self.n_blocks}")
        if hasattr(self.residual, "validate"):
            self.residual.validate()
        return self

    def is_moe_block(self, index: int) -> bool:
        """Whether block ``index`` (0-based) uses the MoE FFN."""
        return self.ffn == "moe" and index >= self.moe.n_dense_blocks

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON safe)."""
        d = dataclasses.asdict(self)
        d["residual"] = self.residual.to_dict() if hasattr(self.residual, "to_dict") else d["residual"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Inverse of ``to_dict()``; missing keys take their defaults, unknown keys are an error."""
        if not isinstance(d, dict):
            raise ValueError(f"model config: expected a mapping, got {type(d).__name__}")
        d = dict(d)
        if "attention" in d:
            d["attention"] = _from_dict(AttentionConfig, d["attention"], "attention")
        if "moe" in d:
            d["moe"] = _from_dict(MoEConfig, d["moe"], "moe")
        if "residual" in d and isinstance(d["residual"], dict):
            r = d["residual"]
            d["residual"] = (ResidualConfig.from_dict(r) if hasattr(ResidualConfig, "from_dict")
                             else _from_dict(ResidualConfig, r, "residual"))
        return _from_dict(cls, d, "model")
