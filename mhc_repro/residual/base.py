"""The residual-connection interface shared by Pre-Norm, HC and mHC (docs/DESIGN.md).

Stream state is always ``x: [B, T, n, C]``; one ``StreamResidual`` wraps one sub-layer (attention or
FFN) and calls ``branch`` ([B, T, C] -> [B, T, C]) exactly once, on ``norm(branch input)`` when a
``norm`` (the sub-layer's RMSNorm) is handed in, else on the branch input itself (the branch then holds
its own norm). Handing the norm in lets mHC fuse it into its pre op (``ResidualConfig.fuse_branch_norm``).
Matrix convention everywhere: ``x_out[i] = sum_j H_res[i, j] x[j]``.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor, nn

from .config import ResidualConfig

_OPS: dict = {}

Branch = Callable[[Tensor], Tensor]


def normed(norm: Optional[nn.Module], h: Tensor) -> Tensor:
    """``norm(h)``, or h when there is no norm to apply (the branch holds its own)."""
    return h if norm is None else norm(h)


# Parameter leaf names (see each module) that get no weight decay: HC static parts and dynamic scales,
# mHC / collapse gates and biases, norm weights.
NO_DECAY_LEAVES = frozenset({"static_pre", "static_res", "static_post", "dyn_scale", "alpha", "bias"})


def no_weight_decay(param_name: str) -> bool:
    """True for a residual / collapse parameter (dotted name, any prefix) that must not be decayed."""
    parts = param_name.split(".")
    return parts[-1] in NO_DECAY_LEAVES or (parts[-1] == "weight" and len(parts) > 1 and "norm" in parts[-2])


class StreamResidual(nn.Module):
    """Base class: ``forward(x [B,T,n,C], branch) -> [B,T,n,C]``.

    While ``capture`` is True, ``forward`` sets ``last_h_res`` to the token-level residual matrix
    ``[B, T, n, n]`` (fp32, detached) it used; otherwise ``last_h_res`` is left untouched.
    """

    n: int

    def __init__(self) -> None:
        super().__init__()
        self.capture = False
        self.last_h_res: Optional[Tensor] = None

    def forward(self, x: Tensor, branch: Branch, norm: Optional[nn.Module] = None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def ops(self, device: torch.device):
        """The mHC stream operators for ``cfg.backend`` on ``device`` (``get_mhc_ops``), cached."""
        key = (self.cfg.backend, device.type, self.cfg.kernel_precision)
        if key not in _OPS:
            from mhc_repro.kernels import get_mhc_ops

            _OPS[key] = get_mhc_ops(*key)
        return _OPS[key]

    def no_decay_parameters(self) -> list[nn.Parameter]:
        """Parameters of this module that must be excluded from weight decay."""
        return [p for name, p in self.named_parameters() if no_weight_decay(name)]

    def _record(self, h_res: Tensor, lead: tuple[int, ...]) -> None:
        if self.capture:
            self.last_h_res = h_res.detach().float().reshape(*lead, self.n, self.n)

    def _check_shape(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[-2] != self.n or x.shape[-1] != self.d_model:
            raise ValueError(f"{type(self).__name__} expects x [B, T, n={self.n}, C={self.d_model}]; "
                             f"got shape {tuple(x.shape)}")

    def _mix(self, x3: Tensor, lead: tuple[int, ...], h_pre: Tensor, h_post: Tensor, h_res: Tensor,
             branch: Branch, ops, norm: Optional[nn.Module] = None) -> Tensor:
        """``x_out[i] = Σ_j H_res[i,j] x[j] + H_post[i] F(Σ_j H_pre[j] x[j])`` on x3 [N, n, C] with
        [N, ...] fp32 coefficients; the stream ops run outside autocast, the branch under the caller's."""
        self._record(h_res, lead)
        c = x3.shape[-1]
        with torch.autocast(device_type=x3.device.type, enabled=False):
            branch_in = ops.mhc_pre(x3, h_pre)
        f = branch(normed(norm, branch_in.reshape(*lead, c)))
        with torch.autocast(device_type=x3.device.type, enabled=False):
            return ops.mhc_post_res(x3, f.reshape(-1, c).contiguous(), h_post, h_res)


@contextlib.contextmanager
def capture_h_res(module: nn.Module) -> Iterator[list[StreamResidual]]:
    """Turn on H_res recording in every StreamResidual under ``module`` (clears old records first).

    Yields the residual layers in registration (= depth) order; their ``last_h_res`` stay readable
    after the context exits.
    """
    layers = [m for m in module.modules() if isinstance(m, StreamResidual)]
    previous = [m.capture for m in layers]
    for m in layers:
        m.capture, m.last_h_res = True, None
    try:
        yield layers
    finally:
        for m, flag in zip(layers, previous):
            m.capture = flag


def build_residual(cfg: ResidualConfig, layer_index: int, d_model: int, norm_eps: float) -> StreamResidual:
    """The residual module for sub-layer ``layer_index`` (0-based, counting attention and FFN sub-layers).

    ``layer_index`` picks HC's one-hot ``A_m = e_{k mod n}`` (and mHC's "hc" bias); ``norm_eps`` is the
    eps of HC's per-stream norm and of mHC's bare RMS.
    """
    cfg.validate()
    if layer_index < 0:
        raise ValueError(f"layer_index={layer_index} is invalid; it must be >= 0")
    if cfg.kind == "residual":
        from .prenorm import PreNormResidual

        return PreNormResidual()
    if cfg.kind == "hc":
        from .hc import HyperConnection

        return HyperConnection(cfg, layer_index, d_model, norm_eps)
    from .mhc import ManifoldHyperConnection

    return ManifoldHyperConnection(cfg, layer_index, d_model, norm_eps)


def expand_streams(h: Tensor, n: int) -> Tensor:
    """[B, T, C] -> [B, T, n, C] by replicating the embedding into every stream (HC, DeepSeek code).

    Returned as a broadcast view (stride 0 over the streams): the first sub-layer materializes it
    inside its own ops, so under the paper's recomputation (``ResidualConfig.recompute``) the first
    block's checkpoint keeps the embedding (C per token) instead of n copies of it (n·C)."""
    if n < 1:
        raise ValueError(f"expand_streams n={n} is invalid; it must be >= 1")
    return h.unsqueeze(-2).expand(*h.shape[:-1], n, h.shape[-1])


class StreamCollapse(nn.Module):
    """[B, T, n, C] -> [B, T, C] before the final norm; ``cfg.collapse`` in {"sum", "mean", "learned"}.

    "learned" follows DeepSeek's later released code (a sigmoid-gated, token-dependent head mix) with
    the mHC coefficient recipe: ``w = (2/n) * sigmoid(alpha * (v @ phi) / rms(v) + bias)`` where
    ``v`` is the flattened stream; ``phi = 0``, ``bias = 0``, ``alpha = alpha_init`` at init, so it
    starts as exactly the mean. Weights are computed in fp32.
    """

    def __init__(self, cfg: ResidualConfig, d_model: int, norm_eps: float = 1e-6) -> None:
        super().__init__()
        cfg.validate()
        self.mode, self.n, self.norm_eps = cfg.collapse, cfg.num_streams, norm_eps
        if self.mode == "learned":
            self.phi = nn.Parameter(torch.zeros(self.n * d_model, self.n))
            self.alpha = nn.Parameter(torch.tensor(float(cfg.alpha_init)))
            self.bias = nn.Parameter(torch.zeros(self.n))

    def weights(self, x: Tensor) -> Tensor:
        """Per-token collapse weights [..., n] (fp32) for the "learned" mode."""
        v = x.reshape(*x.shape[:-2], -1).float()
        r = torch.sqrt(v.pow(2).mean(dim=-1, keepdim=True) + self.norm_eps)
        with torch.autocast(device_type=x.device.type, enabled=False):
            m = v @ self.phi.float()
        return (2.0 / self.n) * torch.sigmoid(self.alpha.float() * m / r + self.bias.float())

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[-2] != self.n:
            raise ValueError(f"StreamCollapse got shape {tuple(x.shape)}; expected [..., n={self.n}, C]")
        if self.n == 1 and self.mode != "learned":
            return x.squeeze(-2)
        if self.mode == "sum":
            return x.sum(dim=-2)
        if self.mode == "mean":
            return x.mean(dim=-2)
        w = self.weights(x)
        return torch.einsum("...j,...jc->...c", w, x.float()).to(x.dtype)

    def no_decay_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if no_weight_decay(name)]
