"""Attention sub-layers: Llama-style MHA (optionally GQA) and DeepSeek-V3 MLA, both through SDPA.

Both take the normed branch input x [B, T, C], rope cos/sin for the new tokens, a boolean attention
mask [B, 1, T, S] (True = may attend; None = plain causal with no cache) and an optional LayerKV.
``out_proj`` is the output projection (its init is scaled by the residual variant's factor).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mhc_repro.config import ModelConfig

from .cache import LayerKV
from .norm import RMSNorm
from .rope import apply_rope


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], scale: float) -> Tensor:
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


class MHA(nn.Module):
    """Llama-style attention: q/k/v projections, RoPE on the whole head, optional grouped KV heads."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        a = cfg.attention
        self.n_heads, self.n_kv, self.head_dim = a.n_heads, a.kv_heads, a.head_dim
        self.q_proj = nn.Linear(cfg.d_model, a.n_heads * a.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, self.n_kv * a.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, self.n_kv * a.head_dim, bias=False)
        self.out_proj = nn.Linear(a.n_heads * a.head_dim, cfg.d_model, bias=False)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Optional[Tensor],
                kv: Optional[LayerKV] = None, start: int = 0) -> Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv is not None:
            k, v = kv.update(k, v, start)
        if self.n_kv != self.n_heads:
            rep = self.n_heads // self.n_kv
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        y = _sdpa(q, k, v, mask, self.head_dim**-0.5)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLA(nn.Module):
    """DeepSeek-V3 multi-head latent attention.

    kv: x -> [latent (kv_lora_rank) | shared rotary key (rope_dim)]; latent -> RMSNorm -> up-projection
    to per-head [k_nope (head_dim) | v (v_head_dim)]. q: x -> (optional LoRA: down, RMSNorm, up) ->
    per-head [q_nope (head_dim) | q_rope (rope_dim)]. Softmax scale 1/sqrt(head_dim + rope_dim).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        a = cfg.attention
        self.n_heads, self.nope, self.rope_dim, self.v_dim = a.n_heads, a.head_dim, a.rope_dim, a.v_dim
        self.kv_rank = a.kv_lora_rank
        qk = a.head_dim + a.rope_dim
        if a.q_lora_rank > 0:
            self.q_down = nn.Linear(cfg.d_model, a.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(a.q_lora_rank, cfg.norm_eps)
            self.q_up = nn.Linear(a.q_lora_rank, a.n_heads * qk, bias=False)
        else:
            self.q_proj = nn.Linear(cfg.d_model, a.n_heads * qk, bias=False)
        self.kv_down = nn.Linear(cfg.d_model, a.kv_lora_rank + a.rope_dim, bias=False)
        self.kv_norm = RMSNorm(a.kv_lora_rank, cfg.norm_eps)
        self.kv_up = nn.Linear(a.kv_lora_rank, a.n_heads * (a.head_dim + self.v_dim), bias=False)
        self.out_proj = nn.Linear(a.n_heads * self.v_dim, cfg.d_model, bias=False)
        self.scale = qk**-0.5

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Optional[Tensor],
                kv: Optional[LayerKV] = None, start: int = 0) -> Tensor:
        b, t, _ = x.shape
        h = self.n_heads
        q = self.q_up(self.q_norm(self.q_down(x))) if hasattr(self, "q_down") else self.q_proj(x)
        q = q.view(b, t, h, self.nope + self.rope_dim).transpose(1, 2)
        q_nope, q_rope = q.split([self.nope, self.rope_dim], dim=-1)
        latent, k_rope = self.kv_down(x).split([self.kv_rank, self.rope_dim], dim=-1)
        kv_full = self.kv_up(self.kv_norm(latent)).view(b, t, h, self.nope + self.v_dim).transpose(1, 2)
        k_nope, v = kv_full.split([self.nope, self.v_dim], dim=-1)
        k_rope = apply_rope(k_rope.unsqueeze(1), *rope).expand(b, h, t, self.rope_dim)
        q = torch.cat([q_nope, apply_rope(q_rope, *rope)], dim=-1)
        k = torch.cat([k_nope, k_rope], dim=-1)
        if kv is not None:
            k, v = kv.update(k, v, start)
        y = _sdpa(q, k, v, mask, self.scale)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, -1))


def build_attention(cfg: ModelConfig) -> nn.Module:
    return MLA(cfg) if cfg.attention.kind == "mla" else MHA(cfg)
