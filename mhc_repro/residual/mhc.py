"""mHC: Manifold-Constrained Hyper-Connections (PAPER.md §1), through the dispatched mHC operators.

Per token: ``v = flatten(x)`` (stream-major, [nC]); ``m = v @ φ`` with one fused ``φ [nC, n²+2n]``
(stored fp32); ``H~ = (1/rms(v)) · [α_pre m_pre, α_post m_post, α_res m_res] + b``;
``H_pre = sigmoid + eps``, ``H_post = 2·sigmoid``, ``H_res = Sinkhorn(exp)`` (t_max iterations, rows
exact). Update ``x_out[i] = Σ_j H_res[i, j] x[j] + H_post[i] F(Σ_j H_pre[j] x[j])``. All of that
lives in ``get_mhc_ops(cfg.backend, device)`` (reference ops or fused Triton kernels); this module
owns the parameters, the ablation switches and the plumbing. Coefficients are fp32 whatever the
stream dtype (autocast is disabled around the ops; the branch itself runs under the caller's autocast).
For n = 1, H_res = 1 (up to the Sinkhorn eps) and mHC reduces to a residual.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from .base import Branch, StreamResidual, normed
from .config import ResidualConfig


def init_bias(cfg: ResidualConfig, layer_index: int) -> Tensor:
    """The [n²+2n] bias at init, slice order [pre | post | res (row-major)]; see ResidualConfig.bias_init."""
    n = cfg.n
    b = torch.zeros(n * n + 2 * n)
    if cfg.bias_init == "hc":
        b[:n] = -cfg.bias_logit
        b[layer_index % n] = cfg.bias_logit  # H_pre ≈ e_{k mod n}
        # b_post stays 0: H_post = 2·sigmoid(0) = 1
        b[2 * n :] = (cfg.bias_logit * torch.eye(n)).reshape(-1)  # H_res ≈ I after Sinkhorn
    return b


class ManifoldHyperConnection(StreamResidual):
    def __init__(self, cfg: ResidualConfig, layer_index: int, d_model: int, norm_eps: float) -> None:
        super().__init__()
        n = self.n = cfg.n
        self.cfg, self.d_model, self.norm_eps = cfg, d_model, norm_eps
        phi = torch.zeros(n * d_model, n * n + 2 * n, dtype=torch.float32)
        if cfg.phi_init == "normal":
            nn.init.normal_(phi, std=cfg.phi_init_std)
        self.phi = nn.Parameter(phi)
        self.alpha = nn.Parameter(torch.full((3,), float(cfg.alpha_init)))
        self.bias = nn.Parameter(init_bias(cfg, layer_index))

    def coefficients(self, x_flat: Tensor, ops=None) -> tuple[Tensor, Tensor, Tensor]:
        """(H_pre [N, n], H_post [N, n], H_res [N, n, n]) fp32 from x_flat [N, nC], ablations applied."""
        cfg, n, num = self.cfg, self.n, x_flat.shape[0]
        ops = ops or self.ops(x_flat.device)
        with torch.autocast(device_type=x_flat.device.type, enabled=False):
            h_pre, h_post, h_res = ops.mhc_coefficients(
                x_flat, self.phi, self.alpha, self.bias, n,
                cfg.sinkhorn_iters, cfg.sinkhorn_eps, self.norm_eps, shift=cfg.sinkhorn_shift)
        dev = x_flat.device
        if not cfg.use_h_pre:
            h_pre = torch.full((num, n), 1.0 / n, device=dev)
        if not cfg.use_h_post:
            h_post = torch.ones(num, n, device=dev)
        if not cfg.use_h_res:
            h_res = torch.eye(n, device=dev).expand(num, n, n).contiguous()
        return h_pre, h_post, h_res

    @property
    def linked(self) -> bool:
        """Whether forward runs the linked pair (the only path with the projection handoff)."""
        cfg = self.cfg
        return cfg.sublayer_ops == "linked" and cfg.use_h_pre and cfg.use_h_post and cfg.use_h_res

    def forward(self, x: Tensor, branch: Branch, norm: Optional[nn.Module] = None, *,
                proj: Optional[tuple[Tensor, Tensor]] = None,
                next_layer: Optional["ManifoldHyperConnection"] = None):
        """x [..., n, C] -> the sub-layer's output. Projection handoff (``residual.proj_handoff``, linked
        only): ``proj`` = (m, Σx²) of x from the previous sub-layer; with ``next_layer`` (the next
        sub-layer's mHC module) the output comes back as (out, (m, Σout²)) through its φ. Its φ is
        read only inside this forward, where FSDP2 (one unit for both modules) has gathered it."""
        self._check_shape(x)
        lead, n, c = tuple(x.shape[:-2]), self.n, self.d_model
        ops = self.ops(x.device)
        x3 = x.reshape(math.prod(lead), n, c)
        if self.linked:
            out = self._linked(x3, lead, branch, ops, norm, proj, next_layer)
            if next_layer is None:
                return out.reshape(x.shape)
            return out[0].reshape(x.shape), out[1]
        if proj is not None or next_layer is not None:
            raise ValueError("the projection handoff needs residual.sublayer_ops='linked' with all three maps on")
        h_pre, h_post, h_res = self.coefficients(x3.reshape(-1, n * c), ops)
        return self._mix(x3, lead, h_pre, h_post, h_res, branch, ops, norm).reshape(x.shape)

    def _linked(self, x3: Tensor, lead: tuple[int, ...], branch: Branch, ops, norm: Optional[nn.Module],
                proj: Optional[tuple[Tensor, Tensor]] = None,
                next_layer: Optional["ManifoldHyperConnection"] = None):
        """The same sub-layer through the linked pair (cfg.sublayer_ops="linked"); with
        cfg.fuse_branch_norm the pre op applies ``norm`` (an RMSNorm: ``weight``, ``eps``) itself."""
        cfg, c = self.cfg, self.d_model
        fuse = cfg.fuse_branch_norm and norm is not None
        extra = dict(norm_weight=norm.weight, norm_eps=float(norm.eps)) if fuse else {}
        if proj is not None:
            extra["proj"] = proj
        off = dict(device_type=x3.device.type, enabled=False)
        with torch.autocast(**off):
            branch_in, h_post, h_res, x_link = ops.mhc_pre_linked(
                x3, self.phi, self.alpha, self.bias, self.n, cfg.sinkhorn_iters, cfg.sinkhorn_eps,
                self.norm_eps, shift=cfg.sinkhorn_shift, **extra)
        self._record(h_res, lead)
        branch_in = branch_in.reshape(*lead, c)
        f = branch(branch_in if fuse else normed(norm, branch_in))
        f = f.reshape(-1, c).contiguous()
        with torch.autocast(**off):
            if next_layer is None:
                return ops.mhc_post_res_linked(x_link, f, h_post, h_res)
            out, m, ss = ops.mhc_post_res_proj_linked(x_link, f, h_post, h_res, next_layer.phi)
            return out, (m, ss)
