"""The decoder LM (docs/DESIGN.md): embedding -> expand_streams -> blocks -> StreamCollapse -> RMSNorm
-> untied head.

Each block has two sub-layers (attention, FFN); each sub-layer is wrapped by its own StreamResidual
from ``build_residual`` (sub-layer index 2*block and 2*block+1), which applies the sub-layer's RMSNorm
(handed in beside the branch, so mHC can fuse it: ``residual.fuse_branch_norm``) and then the branch,
mapping [B, T, C] -> [B, T, C]. The stream state between sub-layers is [B, T, n, C].
The first block expands the embedding into the streams and the last applies the StreamCollapse, each
itself (so a compiled block graph holds them, see ``Block.forward``).

Init: every linear/embedding weight ~ N(0, init_std); the output projections of every branch
(attention ``out_proj``, FFN/expert ``down_proj``) use init_std / ``residual.output_init_scale``
(sqrt(n) for HC, per the HC paper; 1 for the residual baseline and for mHC, whose H_post starts at 1
and whose H_res is near-identity, so the branch contributes as in Pre-Norm). The residual modules
initialise their own parameters; this module does not touch them.

Memory: ``activation_checkpointing`` recomputes each whole block in backward; otherwise
``residual.recompute`` ("stream" / "stream-ops" / "stream-post") runs each recompute unit of
``residual.recompute_blocks`` blocks under an mHC selective recompute policy
(``mhc_repro.residual.recompute``, PAPER.md §5; applied in the unit's first ``Block.forward``, which
runs the unit's other blocks too). Both apply only to forwards with grad enabled and no KV cache.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mhc_repro.config import ModelConfig
from mhc_repro.residual.base import StreamCollapse, StreamResidual, build_residual, capture_h_res, expand_streams
from mhc_repro.residual.mhc import ManifoldHyperConnection
from mhc_repro.residual.recompute import checkpoint_block, recompute_units

from .attention import build_attention
from .cache import KVCache, LayerKV
from .ffn import SwiGLU
from .moe import MoE
from .norm import RMSNorm
from .rope import rope_cos_sin

OUTPUT_PROJECTIONS = ("out_proj", "down_proj")


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int) -> None:
        super().__init__()
        d, eps = cfg.d_model, cfg.norm_eps
        self.attn_norm = RMSNorm(d, eps)
        self.attn = build_attention(cfg)
        self.ffn_norm = RMSNorm(d, eps)
        self.ffn = MoE(cfg) if cfg.is_moe_block(index) else SwiGLU(d, cfg.dense_ffn_width)
        self.attn_residual = build_residual(cfg.residual, 2 * index, d, eps)
        self.ffn_residual = build_residual(cfg.residual, 2 * index + 1, d, eps)
        # PAPER.md §5 recomputation (residual.recompute != "none"); full checkpointing (LM) wins over it.
        # Applied here, inside forward, so that block.compile() traces the checkpoint and its policy.
        self.recompute_stream = cfg.residual.recompute != "none" and not cfg.activation_checkpointing
        self.recompute_mode = cfg.residual.recompute
        self.proj_handoff = cfg.residual.proj_handoff and all(
            isinstance(r, ManifoldHyperConnection) and r.linked for r in (self.attn_residual, self.ffn_residual))

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Optional[Tensor],
                kv: Optional[LayerKV] = None, start: int = 0, collapse: Optional[nn.Module] = None,
                expand: int = 0, followers: tuple["Block", ...] = ()) -> Tensor:
        """[B, T, n, C] -> [B, T, n, C]; with ``collapse`` (the last block) -> collapse(...) [B, T, C];
        with ``expand`` = n (the first block) x is the embedding [B, T, C], expanded here.
        ``followers``: the later blocks of this block's recompute unit (``residual.recompute_blocks``),
        whose sub-layers run here, after this block's, inside its checkpoint (and its compiled graph).
        Both run inside this block's forward so that, compiled, they and their gradients form inside
        the block's graph. A collapse handed in from outside made the block's backward copy its
        expand-view gradient through a slow strided path (H200, C = 2048, 16k tokens: 322 µs;
        RESULTS.md run 38); an expansion outside left its gradient's sum to an eager kernel (160 µs,
        run 69)."""
        if expand:
            x = expand_streams(x, expand)
        if self.recompute_stream and kv is None and torch.is_grad_enabled():
            x = checkpoint_block(self._unit, x, rope, mask, followers, mode=self.recompute_mode)
        elif followers:
            x = self._unit(x, rope, mask, followers)
        else:
            x = self._sublayers(x, rope, mask, kv, start)
        return x if collapse is None else collapse(x)

    def _unit(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Optional[Tensor],
              followers: tuple["Block", ...]) -> Tensor:
        # a recompute unit: this block's sub-layers, then its followers' (training forward: no KV cache)
        for block in (self, *followers):
            x = block._sublayers(x, rope, mask)
        return x

    def _sublayers(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Optional[Tensor],
                   kv: Optional[LayerKV] = None, start: int = 0) -> Tensor:
        # the norms are handed to the residual modules (mHC can fuse them into its pre op)
        attn = lambda h: self.attn(h, rope, mask, kv, start)  # noqa: E731
        if self.proj_handoff:  # residual.proj_handoff: the attention post op forms the FFN's projection
            x, proj = self.attn_residual(x, attn, self.attn_norm, next_layer=self.ffn_residual)
            return self.ffn_residual(x, self.ffn, self.ffn_norm, proj=proj)
        x = self.attn_residual(x, attn, self.attn_norm)
        return self.ffn_residual(x, self.ffn, self.ffn_norm)


class LM(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d, eps = cfg.d_model, cfg.norm_eps
        self.n_streams = cfg.residual.num_streams
        self.embed = nn.Embedding(cfg.vocab_size, d)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_blocks))
        self.collapse = StreamCollapse(cfg.residual, d, eps)
        self.norm = RMSNorm(d, eps)
        self.head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.activation_checkpointing = cfg.activation_checkpointing
        self._moes = [b.ffn for b in self.blocks if isinstance(b.ffn, MoE)]  # a plain list: not submodules again
        # residual.recompute_blocks: the blocks of each recompute unit (one unit per block without recompute)
        self.recompute_units = (recompute_units(cfg.residual.recompute_blocks, self.n_streams, cfg.n_blocks)
                                if any(b.recompute_stream for b in self.blocks) else
                                [range(i, i + 1) for i in range(cfg.n_blocks)])
        a = cfg.attention
        self._rope_dim = a.rope_dim if a.kind == "mla" else a.head_dim
        self.reset_parameters()

    # ---- init ----------------------------------------------------------------------------------
    def _own_roots(self) -> list[tuple[str, nn.Module]]:
        """Modules this class initialises (everything except the residual/collapse modules)."""
        roots = [("embed", self.embed), ("head", self.head), ("norm", self.norm)]
        for i, b in enumerate(self.blocks):
            roots += [(f"blocks.{i}.{n}", getattr(b, n)) for n in ("attn_norm", "attn", "ffn_norm", "ffn")]
        return roots

    @torch.no_grad()
    def reset_parameters(self) -> None:
        std = self.cfg.init_std
        out_std = std / float(self.cfg.residual.output_init_scale)
        for _, root in self._own_roots():
            for name, m in root.named_modules():
                if any(p.is_meta for p in m.parameters(recurse=False)):
                    continue  # meta-device counting: nothing to initialise (and normal_ is slow there)
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    is_out = name.split(".")[-1] in OUTPUT_PROJECTIONS
                    nn.init.normal_(m.weight, 0.0, out_std if is_out else std)
                    if getattr(m, "bias", None) is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, RMSNorm):
                    nn.init.ones_(m.weight)

    # ---- forward -------------------------------------------------------------------------------
    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        return KVCache(len(self.blocks), batch_size, max_len)

    def _positions_and_mask(self, b: int, t: int, start: int, attention_mask: Optional[Tensor],
                            device: torch.device) -> tuple[Tensor, Optional[Tensor]]:
        s = start + t
        q_abs = torch.arange(start, s, device=device)
        causal = torch.arange(s, device=device)[None, :] <= q_abs[:, None]  # [T, S]
        if attention_mask is None:
            pos = q_abs.unsqueeze(0).expand(b, t)
            # No cache: SDPA's is_causal. With a cache, is_causal would align top-left: pass the mask.
            return pos, (None if start == 0 else causal[None, None])
        if tuple(attention_mask.shape) != (b, s):
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)}; expected "
                             f"[batch, past+new] = [{b}, {s}]")
        real = attention_mask.to(device=device).bool()
        pos = (real.long().cumsum(dim=1) - 1).clamp(min=0)[:, start:]
        mask = causal[None, None] & real[:, None, None, :]
        # a padding query sees no real key before it: let it see itself so SDPA gives no NaN
        mask = mask | (torch.arange(s, device=device)[None, :] == q_abs[:, None])[None, None]
        return pos, mask

    def forward(self, idx: Tensor, *, cache: Optional[KVCache] = None,
                attention_mask: Optional[Tensor] = None) -> Tensor:
        """Logits [B, T, V] in fp32. ``attention_mask`` [B, past+T]: 1 = real token, 0 = (left) padding."""
        if idx.dim() != 2:
            raise ValueError(f"idx must be [batch, time]; got shape {tuple(idx.shape)}")
        b, t = idx.shape
        start = cache.length if cache is not None else 0
        pos, mask = self._positions_and_mask(b, t, start, attention_mask, idx.device)
        rope = rope_cos_sin(pos, self._rope_dim, self.cfg.attention.rope_theta)
        h = self.embed(idx)
        dt = self.cfg.residual.stream_torch_dtype  # residual.stream_dtype (PAPER.md §1)
        # under autocast (bf16-mixed) or with weights of that dtype; an fp32 model run without
        # autocast (CPU evaluation) keeps its fp32 stream, as its fp32 branches need fp32 inputs
        if dt is not None and (dt == h.dtype or torch.is_autocast_enabled(idx.device.type)):
            h = h.to(dt)
        x = h  # the first block expands it into the streams (expand_streams), the last collapses them
        for moe in self._moes if self.training else ():
            moe.zero_load()  # here, not inside a block: a block's forward must not branch on it (moe.py)
        use_ckpt = self.activation_checkpointing and cache is None and torch.is_grad_enabled()
        last = len(self.blocks) - 1
        # a training forward runs recompute units of several blocks through their first block
        units = self.recompute_units if cache is None and torch.is_grad_enabled() else [[i] for i in range(last + 1)]
        for unit in units:
            i, block = unit[0], self.blocks[unit[0]]
            collapse = self.collapse if unit[-1] == last else None
            expand = self.n_streams if i == 0 else 0
            if use_ckpt:
                x = checkpoint(block, x, rope, mask, collapse=collapse, expand=expand, use_reentrant=False)
            elif len(unit) > 1:
                x = block(x, rope, mask, collapse=collapse, expand=expand,
                          followers=tuple(self.blocks[j] for j in unit[1:]))
            else:
                x = block(x, rope, mask, cache.layers[i] if cache is not None else None, start, collapse, expand)
        if not self.blocks:
            x = self.collapse(expand_streams(h, self.n_streams))
        if cache is not None:
            cache.length = start + t
        return self.head(self.norm(x)).float()

    # ---- training support ----------------------------------------------------------------------
    def param_groups(self, weight_decay: float) -> list[dict]:
        """Two AdamW groups. No decay: RMSNorm gains, biases (any 1-D parameter), and what the residual
        modules report (HC static parts, mHC alpha/bias, collapse gates). The MoE routing bias is a
        buffer, never optimised. Decayed: every other matrix, embedding and head included."""
        no_decay: set[int] = set()
        for m in self.modules():
            if isinstance(m, (StreamResidual, StreamCollapse)):
                no_decay |= {id(p) for p in m.no_decay_parameters()}
            elif isinstance(m, RMSNorm):
                no_decay.add(id(m.weight))
        decay, plain = [], []
        for p in self.parameters():
            (plain if id(p) in no_decay or p.dim() < 2 else decay).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay, "name": "decay"},
            {"params": plain, "weight_decay": 0.0, "name": "no_decay"},
        ]

    def update_routing_bias(self) -> None:
        """MoE aux-loss-free balancing step for every MoE layer; no-op for dense models."""
        for m in self.modules():
            if isinstance(m, MoE):
                m.update_routing_bias()

    def residual_layers(self) -> list[StreamResidual]:
        """The 2 * n_blocks StreamResidual modules in depth order (attention, FFN, attention, ...)."""
        return [r for b in self.blocks for r in (b.attn_residual, b.ffn_residual)]

    @contextlib.contextmanager
    def capture_diagnostics(self) -> Iterator["LM"]:
        """While active, every residual layer records ``last_h_res`` [B, T, n, n] (fp32, detached)."""
        with capture_h_res(self):
            yield self

    def residual_matrices(self) -> list[Tensor]:
        """Per sub-layer ``last_h_res`` from the last captured forward, in depth order."""
        mats = [r.last_h_res for r in self.residual_layers()]
        if any(m is None for m in mats):
            raise RuntimeError("no residual matrices recorded: run a forward inside capture_diagnostics()")
        return mats

    def num_params(self) -> dict:
        """{"total", "active", "embedding", "head", ...} — see mhc_repro.model.params."""
        from .params import param_breakdown

        return param_breakdown(self)
