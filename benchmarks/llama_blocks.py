"""The minimal Llama-style block of the mHC benchmarks: RMSNorm, MHA with RoPE and SDPA, SwiGLU;
with ``ops`` (a get_mhc_ops namespace) each sub-layer is wrapped in mHC with n streams."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    def __init__(self, c: int, eps: float = 1e-6):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(c)), eps

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, c: int, head_dim: int = 128):
        super().__init__()
        self.h, self.d = c // head_dim, head_dim
        self.qkv, self.o = nn.Linear(c, 3 * c, bias=False), nn.Linear(c, c, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.h, self.d).transpose(1, 3).unbind(2)
        pos = torch.arange(T, device=x.device, dtype=torch.float32)
        inv = 1.0 / (10000 ** (torch.arange(0, self.d, 2, device=x.device, dtype=torch.float32) / self.d))
        ang = torch.outer(pos, inv)
        cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)

        def rope(t):
            t1, t2 = t[..., ::2], t[..., 1::2]
            return torch.stack((t1 * cos - t2 * sin, t1 * sin + t2 * cos), -1).flatten(-2)

        y = F.scaled_dot_product_attention(rope(q), rope(k), v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        h = 256 * ((int(8 * c / 3) + 255) // 256)
        self.w13, self.w2 = nn.Linear(c, 2 * h, bias=False), nn.Linear(h, c, bias=False)

    def forward(self, x):
        a, b = self.w13(x).chunk(2, -1)
        return self.w2(F.silu(a) * b)


class Block(nn.Module):
    """Pre-Norm Llama block; with ``ops`` each sub-layer is wrapped in mHC (n streams)."""

    def __init__(self, c: int, n: int = 1, ops=None):
        super().__init__()
        self.n1, self.attn, self.n2, self.ffn = RMSNorm(c), Attention(c), RMSNorm(c), SwiGLU(c)
        # linked: the linked sub-layer pair; fuse_norm (with linked): the branch's RMSNorm inside pre;
        # xl (with linked): each post op also forms the next sub-layer's projection (kernels/cross_layer.py)
        self.n, self.ops, self.linked, self.fuse_norm, self.xl = n, ops, False, False, False
        if ops is not None:
            M = n * n + 2 * n
            self.phi = nn.Parameter(torch.randn(2, n * c, M) * (0.02 / (n * c) ** 0.5))
            self.alpha = nn.Parameter(torch.full((2, 3), 0.01))
            b = torch.zeros(2, M)
            b[:, 2 * n:] = 2.0 * torch.eye(n).reshape(-1)
            self.bias = nn.Parameter(b)

    def _mhc(self, x, i, norm, branch, proj=None, phi_next=None):
        """Sub-layer i, branch(norm(·)): the output stream [B, T, n, C]; with ``phi_next`` (xl) also the
        next sub-layer's projection (m, Σx²) of it, and with ``proj`` this one's, from the previous."""
        B, T, n, C = x.shape
        x3 = x.reshape(B * T, n, C)
        if self.linked:  # one stream-gradient buffer (mhc_repro/kernels/linked.py)
            fused = dict(norm_weight=norm.weight, norm_eps=norm.eps) if self.fuse_norm else {}
            if proj is not None:
                fused["proj"] = proj
            b, hq, hr, xl = self.ops.mhc_pre_linked(x3, self.phi[i], self.alpha[i], self.bias[i], n, **fused)
            b = b.view(B, T, C)
            f = branch(b if self.fuse_norm else norm(b)).reshape(B * T, C)
            if phi_next is not None:
                out, m, ss = self.ops.mhc_post_res_proj_linked(xl, f, hq, hr, phi_next)
                return out.view(B, T, n, C), (m, ss)
            return self.ops.mhc_post_res_linked(xl, f, hq, hr).view(B, T, n, C)
        hp, hq, hr = self.ops.mhc_coefficients(x3.reshape(B * T, n * C), self.phi[i], self.alpha[i],
                                               self.bias[i], n)
        f = branch(norm(self.ops.mhc_pre(x3, hp).view(B, T, C)))
        return self.ops.mhc_post_res(x3, f.reshape(B * T, C), hq, hr).view(B, T, n, C)

    def forward(self, x, proj=None, phi_next=None):
        """x -> x. An ``xl`` block: sub-layer 0's post op hands sub-layer 1 its projection; ``proj``:
        sub-layer 0's (m, Σx²) from the previous block, ``phi_next``: the next block's φ[0], for which
        sub-layer 1's post op forms them, returned as (x, (m, Σx²)) (x alone without phi_next)."""
        if self.ops is None:
            x = x + self.attn(self.n1(x))
            return x + self.ffn(self.n2(x))
        if not self.xl:
            x = self._mhc(x, 0, self.n1, self.attn)
            return self._mhc(x, 1, self.n2, self.ffn)
        x, p = self._mhc(x, 0, self.n1, self.attn, proj, self.phi[1])
        return self._mhc(x, 1, self.n2, self.ffn, p, phi_next)
