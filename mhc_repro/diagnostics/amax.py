"""Amax Gain Magnitude (PAPER.md §2): how much the residual mappings can amplify signal across depth.

For a mapping M (convention ``x_out[i] = Σ_j M[i, j] x[j]``):
  forward gain  = max_i |Σ_j M[i, j]|   (largest absolute signed row sum)
  backward gain = max_j |Σ_i M[i, j]|   (largest absolute signed column sum)
Single layer l: M = H_l. Composite forward at l: H_l ··· H_1 (prefix product); composite backward at
l: H_L ··· H_l (suffix product). Layers are sub-layers, 1..L in depth order. Also reported:
``max_j |log |Σ_i M[i, j]||`` per layer, which (unlike the max gain) also shows columns that shrink.

Token reduction: ``"matrix_mean"`` (default, what the paper's figures do) averages each layer's
matrices over all tokens first and computes gains/products of the mean matrices; ``"gain_mean"``
computes the gains (and composites) per token, then averages the gains over tokens (needs the same
token shape in every layer). Products are computed in float64.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

REDUCTIONS = ("matrix_mean", "gain_mean")


def forward_gain(m: Tensor) -> Tensor:
    """max_i |Σ_j M[..., i, j]| -> [...]"""
    return m.sum(dim=-1).abs().amax(dim=-1)


def backward_gain(m: Tensor) -> Tensor:
    """max_j |Σ_i M[..., i, j]| -> [...]"""
    return m.sum(dim=-2).abs().amax(dim=-1)


def log_colsum(m: Tensor) -> Tensor:
    """max_j |log |Σ_i M[..., i, j]|| -> [...] (|colsum| clamped at 1e-30 so a zero column is finite)."""
    return m.sum(dim=-2).abs().clamp_min(1e-30).log().abs().amax(dim=-1)


def _stack(h_res: Sequence[Tensor], reduce: str) -> Tensor:
    """[L, ..., n, n] float64 (tokens flattened into one dim, or averaged away for matrix_mean)."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"amax reduce={reduce!r} is unknown; allowed: {', '.join(REDUCTIONS)}")
    if len(h_res) == 0:
        raise ValueError("amax needs at least one H_res matrix; got an empty list")
    n = h_res[0].shape[-1]
    mats = []
    for i, h in enumerate(h_res):
        if h.dim() < 2 or h.shape[-1] != h.shape[-2] or h.shape[-1] != n:
            raise ValueError(f"H_res #{i} has shape {tuple(h.shape)}; expected [..., {n}, {n}]")
        h = h.detach().to(torch.float64).cpu().reshape(-1, n, n)
        mats.append(h.mean(dim=0, keepdim=True) if reduce == "matrix_mean" else h)
    shapes = {m.shape for m in mats}
    if len(shapes) != 1:
        raise ValueError(f"amax reduce='gain_mean' needs the same token count in every layer; got {sorted(shapes)}")
    return torch.stack(mats)  # [L, K, n, n], K = 1 for matrix_mean


def amax_gains(h_res: Sequence[Tensor], reduce: str = "matrix_mean") -> dict:
    """Amax gains from L per-sub-layer H_res tensors ([..., n, n] each, token-level, depth order).

    Returns plain python lists of length L under ``fwd_single, bwd_single, fwd_composite,
    bwd_composite, log_colsum_single`` and their maxima under ``<key>_max`` (``log_colsum_max`` for
    the last), plus ``reduce``, ``num_layers`` and ``n``.
    """
    m = _stack(h_res, reduce)  # [L, K, n, n]
    num_layers, n = m.shape[0], m.shape[-1]
    prefix, suffix = torch.empty_like(m), torch.empty_like(m)
    acc = torch.eye(n, dtype=m.dtype).expand_as(m[0])
    for l in range(num_layers):  # H_l ··· H_1
        acc = m[l] @ acc
        prefix[l] = acc
    acc = torch.eye(n, dtype=m.dtype).expand_as(m[0])
    for l in reversed(range(num_layers)):  # H_L ··· H_l
        acc = acc @ m[l]
        suffix[l] = acc

    def per_layer(values: Tensor) -> list[float]:  # [L, K] -> mean over tokens
        return values.mean(dim=1).tolist()

    out = {
        "fwd_single": per_layer(forward_gain(m)),
        "bwd_single": per_layer(backward_gain(m)),
        "fwd_composite": per_layer(forward_gain(prefix)),
        "bwd_composite": per_layer(backward_gain(suffix)),
        "log_colsum_single": per_layer(log_colsum(m)),
    }
    for key in ("fwd_single", "bwd_single", "fwd_composite", "bwd_composite"):
        out[f"{key}_max"] = max(out[key])
    out["log_colsum_max"] = max(out["log_colsum_single"])
    out.update(reduce=reduce, num_layers=num_layers, n=n)
    return out


def plot_amax(result: dict, path: str, title: str = "Amax Gain Magnitude") -> str:
    """2-panel PNG: single-layer gains (left), composite gains on a log y axis (right). Returns path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = list(range(1, len(result["fwd_single"]) + 1))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(xs, result["fwd_single"], marker=".", label="forward gain (max |row sum|)")
    ax1.plot(xs, result["bwd_single"], marker=".", label="backward gain (max |col sum|)")
    ax1.set(title="Single-layer mapping", xlabel="sub-layer index l", ylabel="Amax gain magnitude")
    ax2.plot(xs, result["fwd_composite"], marker=".", label="forward: H_l···H_1")
    ax2.plot(xs, result["bwd_composite"], marker=".", label="backward: H_L···H_l")
    ax2.set_yscale("log")
    ax2.set(title="Composite mapping", xlabel="sub-layer index l", ylabel="Amax gain magnitude")
    for ax in (ax1, ax2):
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title} (tokens: {result.get('reduce', 'matrix_mean')})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
