"""Dynamic Hyper-Connections (Zhu et al. 2024), as PAPER.md §1 states them.

Per stream i, ``x̄_i = RMSNorm(x_i)`` over C (one learnable weight shared by the streams), then
``H_pre = s·tanh(x̄ W_m) + A_m``, ``H_res = s·tanh(x̄ W_r) + A_r``, ``H_post = s·tanh(x̄ W_β) + B``
with ``W = 0``, ``A_m = e_{k mod n}``, ``A_r = I``, ``B = 1`` at init, so HC starts as exactly a
Pre-Norm residual network. ``s`` = (s_alpha for H_pre and H_res, s_beta for H_post) are learnable
scalars initialised to ``cfg.hc_scale`` (the HC paper's ``dynamic_alpha_scale`` /
``dynamic_beta_scale``), or fixed with ``cfg.hc_scale_learnable = False``. Each stream's own
C-vector produces its own row (row i of H_res comes from stream i) and the update is
``x_out[i] = Σ_j H_res[i, j] x[j] + H_post[i] F(Σ_j H_pre[j] x[j])``.
(The HC paper applies its A_r transposed, i.e. row j from stream j says where stream j goes; by default
we follow PAPER.md's single convention literally, ``cfg.hc_res_from = "column"`` gives the HC paper's.) Coefficients are fp32; the stream keeps its dtype. The stream
ops come from ``get_mhc_ops`` (they are generic in H), so HC also uses the fused kernels on GPU.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional

import torch
from torch import Tensor, nn

from .base import Branch, StreamResidual
from .config import ResidualConfig


class HyperConnection(StreamResidual):
    def __init__(self, cfg: ResidualConfig, layer_index: int, d_model: int, norm_eps: float) -> None:
        super().__init__()
        n = self.n = cfg.n
        self.cfg, self.d_model = cfg, d_model
        # (s_alpha, s_beta): a 1-D parameter (FSDP shards dim 0), or two python floats when fixed
        self.fixed_scale = None if cfg.hc_scale_learnable else (float(cfg.hc_scale),) * 2
        if cfg.hc_scale_learnable:
            self.dyn_scale = nn.Parameter(torch.full((2,), float(cfg.hc_scale)))
        self.norm = nn.RMSNorm(d_model, eps=norm_eps)
        # Dynamic weights, fused: columns [pre (1) | post (1) | res (n)]; zero at init (HC paper).
        self.w_dyn = nn.Parameter(torch.zeros(d_model, n + 2))
        self.static_pre = nn.Parameter(nn.functional.one_hot(torch.tensor(layer_index % n), n).float())
        self.static_res = nn.Parameter(torch.eye(n))
        self.static_post = nn.Parameter(torch.ones(n))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints from before the scales were learnable hold no dyn_scale: they ran with the
        # scales fixed at hc_scale, so loading that value reproduces them exactly.
        key = prefix + "dyn_scale"
        if self.fixed_scale is None and key not in state_dict and prefix + "w_dyn" in state_dict:
            warnings.warn(f"{key} missing from the checkpoint (made before HC's scales were learnable): "
                          f"set to hc_scale={self.cfg.hc_scale}", stacklevel=2)
            state_dict[key] = torch.full((2,), float(self.cfg.hc_scale))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def coefficients(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(H_pre [..., n], H_post [..., n], H_res [..., n, n]) in fp32 (fp64 for an fp64 stream) from x [..., n, C]."""
        n, cfg = self.n, self.cfg
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # fp32 coefficients even on a bf16 stream
        s_alpha, s_beta = self.fixed_scale or self.dyn_scale.to(xf.dtype).unbind(0)
        with torch.autocast(device_type=x.device.type, enabled=False):
            xn = nn.functional.rms_norm(xf, (self.d_model,), self.norm.weight.to(xf.dtype), self.norm.eps)
            d = torch.tanh(xn @ self.w_dyn.to(xf.dtype))  # [..., n, n+2], row i <- stream i
        lead = x.shape[:-2]
        h_pre = s_alpha * d[..., 0] + self.static_pre.to(xf.dtype)
        h_post = s_beta * d[..., 1] + self.static_post.to(xf.dtype)
        dyn_res = d[..., 2:] if cfg.hc_res_from == "row" else d[..., 2:].transpose(-1, -2)
        h_res = s_alpha * dyn_res + self.static_res.to(xf.dtype)
        if not cfg.use_h_pre:
            h_pre = torch.full((*lead, n), 1.0 / n, device=x.device, dtype=xf.dtype)
        if not cfg.use_h_post:
            h_post = torch.ones(*lead, n, device=x.device, dtype=xf.dtype)
        if not cfg.use_h_res:
            h_res = torch.eye(n, device=x.device, dtype=xf.dtype).expand(*lead, n, n)
        return h_pre, h_post, h_res

    def forward(self, x: Tensor, branch: Branch, norm: Optional[nn.Module] = None) -> Tensor:
        self._check_shape(x)
        lead, n, c = tuple(x.shape[:-2]), self.n, self.d_model
        num = math.prod(lead)
        h_pre, h_post, h_res = self.coefficients(x)
        return self._mix(x.reshape(num, n, c), lead, h_pre.reshape(num, n).contiguous(),
                         h_post.reshape(num, n).contiguous(), h_res.reshape(num, n, n).contiguous(),
                         branch, self.ops(x.device), norm).reshape(x.shape)
