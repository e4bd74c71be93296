"""Named model configurations: the paper's Table 5 models and small ones for CPU / single-GPU studies.

Every preset is the **baseline** (Pre-Norm residual); ``with_variant(cfg, "hc" | "mhc", ...)`` swaps in
another residual variant. ``get_preset`` returns a fresh copy each call.

Paper presets (PAPER.md §3, Table 5). Stated by the paper: vocab 129280 with untied embedding/head,
hidden C, blocks, heads × head dim 128, MLA KV LoRA rank 512, RoPE dim 64 with θ = 10000, RMSNorm eps
1e-20, MoE routed/active/shared experts and expert width, 1 leading dense block, aux-loss-free
balancing, sequence length 4096. Our choices for what Table 5 leaves open ([open]):
  * head dim 128 = DeepSeek-V3's ``qk_nope_head_dim`` = ``v_head_dim`` = 128; the decoupled RoPE part
    (64) is added on top of it for q and k (q/k head size 192), as in DeepSeek-V3.
  * no query LoRA (``q_lora_rank = 0``: a full C -> H·192 projection).
  * dense first-block FFN width = (active routed + shared) × expert width = 8 × expert width
    (7168 / 10240 / 12288): the dense block costs what an MoE block's active experts cost.
  * init std 0.006 (DeepSeek-V3's), routing-bias rate 1e-3 (DeepSeek-V3's γ), sigmoid scores,
    route_scale 1.
With these, ``mhc-repro params`` gives 3B 2.970B / 609M, 9B 9.172B / 1.654B, 27B 27.03B / 4.124B
(paper 2.97B / 612M, 9.18B / 1.66B, 27.0B / 4.14B: all within 0.6%).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Callable

from mhc_repro.config import AttentionConfig, ModelConfig, MoEConfig
from mhc_repro.residual.config import ResidualConfig

VARIANTS = ("residual", "hc", "mhc")


def _paper(d_model: int, n_blocks: int, n_heads: int, n_routed: int, expert_width: int) -> ModelConfig:
    n_active, n_shared = 6, 2
    return ModelConfig(
        vocab_size=129280, d_model=d_model, n_blocks=n_blocks, max_seq_len=4096, norm_eps=1e-20,
        init_std=0.006,
        attention=AttentionConfig(kind="mla", n_heads=n_heads, head_dim=128, kv_lora_rank=512,
                                  q_lora_rank=0, rope_dim=64, rope_theta=10000.0, v_head_dim=128),
        ffn="moe", dense_ffn_width=(n_active + n_shared) * expert_width,
        moe=MoEConfig(n_routed=n_routed, n_active_routed=n_active, n_shared=n_shared,
                      expert_width=expert_width, n_dense_blocks=1, score_func="sigmoid",
                      bias_update_rate=1e-3, route_scale=1.0),
        residual=ResidualConfig(kind="residual"),
    )


def _tiny() -> ModelConfig:
    """Dense Llama-style, ~2.9M params (2.1M of them embedding/head): trains on 2 CPU cores."""
    return ModelConfig(
        vocab_size=8192, d_model=128, n_blocks=4, max_seq_len=256, norm_eps=1e-6, init_std=0.02,
        attention=AttentionConfig(kind="mha", n_heads=4, head_dim=32, rope_theta=10000.0),
        ffn="dense", dense_ffn_width=352, residual=ResidualConfig(kind="residual"),
    )


def _tiny_moe() -> ModelConfig:
    """The paper's architecture in miniature: MLA + DeepSeek-style MoE (8 routed, 2 active, 1 shared),
    one leading dense block of width (2 + 1) × 64."""
    return ModelConfig(
        vocab_size=8192, d_model=128, n_blocks=4, max_seq_len=256, norm_eps=1e-6, init_std=0.02,
        attention=AttentionConfig(kind="mla", n_heads=4, head_dim=32, kv_lora_rank=64, q_lora_rank=0,
                                  rope_dim=16, rope_theta=10000.0, v_head_dim=32),
        ffn="moe", dense_ffn_width=192,
        moe=MoEConfig(n_routed=8, n_active_routed=2, n_shared=1, expert_width=64, n_dense_blocks=1,
                      score_func="sigmoid", bias_update_rate=1e-3, route_scale=1.0),
        residual=ResidualConfig(kind="residual"),
    )


def _small() -> ModelConfig:
    """GPT-2-small-like dense model (~110M params) for single-GPU studies."""
    return ModelConfig(
        vocab_size=16384, d_model=768, n_blocks=12, max_seq_len=1024, norm_eps=1e-6, init_std=0.02,
        attention=AttentionConfig(kind="mha", n_heads=12, head_dim=64, rope_theta=10000.0),
        ffn="dense", dense_ffn_width=2048, residual=ResidualConfig(kind="residual"),
    )


PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "tiny": _tiny,
    "tiny-moe": _tiny_moe,
    "small": _small,
    "3b": lambda: _paper(1280, 12, 16, 64, 896),
    "9b": lambda: _paper(1920, 18, 24, 64, 1280),
    "27b": lambda: _paper(2560, 30, 32, 72, 1536),
    "3b-1t": lambda: _paper(1280, 12, 16, 64, 896),  # same model as 3b; only the training run differs
}


def list_presets() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> ModelConfig:
    """A fresh, validated ModelConfig for preset ``name`` (baseline residual variant)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}")
    return PRESETS[name]().validate()


def with_variant(cfg: ModelConfig, kind: str, **residual_overrides) -> ModelConfig:
    """A copy of ``cfg`` whose residual is ``kind`` ("residual", "hc", "mhc") with optional
    ResidualConfig field overrides (e.g. ``n=2``, ``collapse="mean"``, ``use_h_post=False``)."""
    if kind not in VARIANTS:
        raise ValueError(f"unknown residual variant {kind!r}; allowed: {', '.join(VARIANTS)}")
    known = {f.name for f in dataclasses.fields(ResidualConfig)}
    bad = sorted(set(residual_overrides) - known - {"kind"})
    if bad:
        raise ValueError(f"unknown residual option(s) {bad}; allowed: {', '.join(sorted(known))}")
    out = copy.deepcopy(cfg)
    fields = {**dataclasses.asdict(cfg.residual), **residual_overrides, "kind": kind}
    if kind != "residual" and "n" not in residual_overrides and cfg.residual.kind == "residual":
        fields["n"] = ResidualConfig.n  # the residual baseline forces n = 1; restore the default (4)
    out.residual = ResidualConfig(**fields)
    return out.validate()
