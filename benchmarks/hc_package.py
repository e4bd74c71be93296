"""The `hyper-connections` package's mHC (lucidrains, PyPI 0.4.11) around the benchmark's Llama blocks.

Optional extra (``pip install .[bench]``); used by ``bench_mhc.py --variants hc_pkg``.

Which class: ``hyper_connections.mHCv2.ManifoldConstrainedHyperConnections``. It computes exactly the same
function as the exported ``hyper_connections.mHC`` (checked on CPU with shared parameters: max |diff| 0),
but takes the stream as ``[..., n, C]``, the layout ``bench_mhc.bench_stack`` uses ([B, T, n, C]), so no
layout conversion is needed. The exported class folds streams into the batch (``[(B n), T, C]``) and would
cost two extra stream copies per sub-layer here.

What it computes per sub-layer (differs from PAPER.md §1, see the report / test):
  per stream s: x̄_s = RMSNorm(x_s) (learnable gain), over C only — NOT one statistic of the flattened nC row;
  [pre_s, res_s·] = static_alpha[s] + scale · (x̄_s W_alpha)   (W_alpha: [C, 1+n], shared by the streams;
                    scale = pre_branch_scale / residual_scale, init 0.01; static: one-hot pre, identity res)
  post_s         = static_beta[s] + h_post_scale · (x̄_s · w_beta)   (static 1, scale init 0.01)
  H_pre = sigmoid(pre), H_post = 2 sigmoid(post), H_res = Sinkhorn(exp(res)), 20 iterations (fp32,
  max-subtracted, autograd through the unrolled loop; L1 normalise over the source index, then over the
  output index, so the exact sums are per *source* stream: columns of H_res in the x_out = H_res x
  convention, rows approximate — the transpose of PAPER.md's convention).
  Mixing runs in fp32 on a fp32 copy of the stream; outputs are cast back to the stream dtype (bf16).
Its own parameters (static_alpha, dynamic_alpha_fn, *_scale, static_beta, dynamic_beta_fn, norm.gamma)
stay fp32: the module casts them to fp32 itself; the branch weights are bf16 as in ``stack_variants.build``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

HC_PARAM_NAMES = ("static_alpha", "dynamic_alpha_fn", "pre_branch_scale", "residual_scale",
                  "static_beta", "dynamic_beta_fn", "h_post_scale", "gamma")
SINKHORN_ITERS = 20


def hc_package_version() -> str | None:
    """Installed version of `hyper-connections`, or None when it (or a dependency) is not importable."""
    try:
        import hyper_connections  # noqa: F401
        import hyper_connections.mHCv2  # noqa: F401  (needs torch-einops-utils as well)
    except ImportError:
        return None
    try:
        from importlib.metadata import version

        return version("hyper-connections")
    except Exception:  # installed without metadata
        return getattr(hyper_connections, "__version__", "unknown")


class HCPackageBlock(nn.Module):
    """Pre-Norm Llama block, each sub-layer wrapped by the package's mHC; stream [B, T, n, C] in and out."""

    def __init__(self, c: int, n: int, index: int, norm_cls, attn_cls, ffn_cls, use_triton_sinkhorn=False):
        super().__init__()
        from hyper_connections.mHCv2 import ManifoldConstrainedHyperConnections as PkgMHC

        self.n1, self.attn, self.n2, self.ffn = norm_cls(c), attn_cls(c), norm_cls(c), ffn_cls(c)
        # layer_index fixes the one-hot of H_pre's static part (else the package picks a random stream).
        kw = dict(dim=c, sinkhorn_iters=SINKHORN_ITERS, use_triton_sinkhorn=use_triton_sinkhorn)
        self.hc1 = PkgMHC(n, layer_index=2 * index, **kw)
        self.hc2 = PkgMHC(n, layer_index=2 * index + 1, **kw)

    def forward(self, x):
        h, add_residual = self.hc1(x)  # h: [B, T, C] branch input; add_residual(f) -> [B, T, n, C]
        x = add_residual(self.attn(self.n1(h)))
        h, add_residual = self.hc2(x)
        return add_residual(self.ffn(self.n2(h)))


def build_hc_package_blocks(c: int, n: int, n_blocks: int, device, norm_cls=None, attn_cls=None, ffn_cls=None,
                            dtype=torch.bfloat16, use_triton_sinkhorn=False) -> nn.ModuleList:
    """``n_blocks`` HCPackageBlocks on ``device``; branch weights in ``dtype``, the package's params fp32.

    ``norm_cls, attn_cls, ffn_cls`` default to llama_blocks' RMSNorm, Attention, SwiGLU (passed in by
    stack_variants.build).
    """
    if norm_cls is None or attn_cls is None or ffn_cls is None:
        from llama_blocks import Attention, RMSNorm, SwiGLU

        norm_cls, attn_cls, ffn_cls = norm_cls or RMSNorm, attn_cls or Attention, ffn_cls or SwiGLU
    torch.manual_seed(0)
    blocks = nn.ModuleList([HCPackageBlock(c, n, i, norm_cls, attn_cls, ffn_cls, use_triton_sinkhorn)
                            for i in range(n_blocks)]).to(device)
    for name, p in blocks.named_parameters():
        is_hc = name.split(".")[1] in ("hc1", "hc2") and name.split(".")[-1] in HC_PARAM_NAMES
        if not is_hc:
            p.data = p.data.to(dtype)
    return blocks
