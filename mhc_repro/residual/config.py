"""ResidualConfig: which residual connection wraps each sub-layer, and how it is initialised.

Framework-free (no torch import). The paper's [open] choices (PAPER.md §1) are options here, with the
defaults explained per field.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

KINDS = ("residual", "hc", "mhc")
PHI_INITS = ("normal", "zeros")
BIAS_INITS = ("zeros", "hc")
COLLAPSES = ("sum", "mean", "learned")
BACKENDS = ("auto", "reference", "triton")
RECOMPUTES = ("none", "stream", "stream-ops", "stream-post")
STREAM_DTYPES = ("auto", "bfloat16", "float32")
KERNEL_PRECISIONS = ("bf16x2", "bf16")
SUBLAYER_OPS = ("three", "linked")
HC_RES_FROM = ("row", "column")


@dataclass
class ResidualConfig:
    kind: str = "mhc"
    """Residual variant: "residual" (Pre-Norm, n = 1), "hc" (dynamic Hyper-Connections), "mhc"."""

    n: int = 4
    """Expansion rate (number of residual streams). Paper: 4 for HC and mHC. Forced to 1 for "residual"."""

    sinkhorn_iters: int = 20
    """mHC Sinkhorn-Knopp iterations t_max (each: normalise columns, then rows). Paper: 20."""

    sinkhorn_eps: float = 1e-6
    """eps in the Sinkhorn denominators and added to H_pre (DeepSeek reference code: 1e-6)."""

    sinkhorn_shift: bool = False
    """mHC: exponentiate H~_res minus each column's max logit (held constant in the backward) before
    Sinkhorn. False = PAPER.md §1's literal exp(H~_res). The first (column) step cancels the shift up
    to ~eps relative, and it removes the literal exp's fp32 failure modes: a logit above ~88 overflows
    (inf / inf = NaN); a column of logits all below ~-14 sums to less than eps, which swamps the first
    column steps, and below ~-87 (flush-to-zero) to ~-103 it is exactly 0 and stays 0 (H_res not
    doubly stochastic). Switch it on so a stability study does not blame mHC for a NaN of our
    numerics. [implementation choice, not in the paper]"""

    alpha_init: float = 0.01
    """mHC: initial value of the three learnable gating scalars alpha_pre, alpha_post, alpha_res."""

    hc_scale: float = 0.01
    """HC: the scales s_alpha = s_beta on the tanh(dynamic) terms at init (HC paper: 0.01)."""

    hc_scale_learnable: bool = True
    """HC: learn s_alpha (H_pre and H_res) and s_beta (H_post), initialised to ``hc_scale``, as the HC
    paper's dynamic-HC pseudo-code does (``dynamic_alpha_scale`` / ``dynamic_beta_scale`` are
    ``nn.Parameter(0.01)``) and as mHC's description of HC does (its alpha are learnable gating
    factors initialised small). False: both stay fixed at ``hc_scale`` (this project's behaviour
    before the fix). Checkpoints from then, which hold no scales, load with both at ``hc_scale``."""

    hc_res_from: str = "row"
    """HC: which line of the dynamic H_res term each stream's own C-vector produces. ``row``: row i comes
    from stream i, ``x_out[i] = Σ_j H_res[i, j] x[j]`` (PAPER.md's "each stream's own C-vector produces its
    own row", followed literally); ``column``: column j comes from stream j, i.e. the HC paper's A_rᵀ, so
    stream j's vector says where stream j goes. The static part A_r is learned either way."""

    use_h_res: bool = True
    """Table 1 ablation: learn H_res. Disabled -> H_res = identity (mhc and hc)."""

    use_h_pre: bool = True
    """Table 1 ablation: learn H_pre. Disabled -> H_pre = uniform 1/n (mhc and hc)."""

    use_h_post: bool = True
    """Table 1 ablation: learn H_post. Disabled -> H_post = ones (mhc and hc)."""

    phi_init: str = "normal"
    """mHC init of the fused projection phi [nC, n^2+2n]: "normal" (N(0, phi_init_std^2)) or "zeros".
    [open] Default "normal": tiny token-dependent noise so the coefficients (and alpha, whose gradient is
    zero while phi = 0) get a useful gradient from step 0. Its effect on the logits at init is
    alpha_init * phi_init_std * sqrt(nC) (~0.014 at C = 1280, n = 4): negligible next to the bias."""

    phi_init_std: float = 0.02
    """Std of phi when phi_init = "normal"."""

    bias_init: str = "hc"
    """mHC init of the bias b [n^2+2n]: "zeros" or "hc".
    [open] With phi = 0, b = 0 and streams replicated from the embedding, every stream stays identical
    forever under sum/mean collapse (H_pre, H_post uniform, H_res = J/n, and all gradients are
    permutation-symmetric), i.e. the network is a Pre-Norm residual net that can never use its n streams.
    Default "hc" breaks the symmetry the way HC's init does: b_pre one-hot-ish at stream (layer k mod n)
    (+bias_logit there, -bias_logit elsewhere), b_res = bias_logit on the diagonal and 0 elsewhere
    (H_res near identity), b_post = 0 (H_post = 2 sigmoid(0) = 1). The forward at init is still a
    Pre-Norm residual net, but each layer reads a different stream, so the gradients differ across
    streams and they diverge from the first update (exactly HC's mechanism)."""

    bias_logit: float = 3.0
    """Strength of the "hc" bias init: sigmoid(+-3) = 0.953 / 0.047 for H_pre; H_res diagonal
    e^3 / (e^3 + n - 1) = 0.87 at n = 4. [open]"""

    collapse: str = "sum"
    """Streams -> one vector before the final norm: "sum" (HC paper), "mean" (Megatron) or "learned"
    (DeepSeek's later code: token-dependent sigmoid weights, w = (2/n) sigmoid(alpha (v.phi)/rms(v) + b),
    initialised phi = 0, b = 0 so it starts as exactly the mean). Under the final RMSNorm sum and mean
    differ only through the norm eps."""

    backend: str = "auto"
    """mHC operator implementation: "auto" (Triton on CUDA, reference elsewhere), "reference", "triton"."""

    recompute: str = "none"
    """The paper's memory-saving recomputation (PAPER.md §5): "none" or "stream". "stream" runs each
    transformer block under selective activation checkpointing (``mhc_repro.residual.recompute``):
    matmul, attention and mHC-coefficient outputs are kept; the stream ops (apply H_pre, the H_res/H_post
    merge) and the cheap elementwise ops around them (norms, RoPE, activations) are re-run in backward.
    Per recompute unit (``recompute_blocks`` consecutive blocks, one by default) only its input stream
    (n·C per token) is stored; the streams inside it and the branch inputs are not. Meant for the
    fused (triton) backend; on the reference backend the same policy recomputes the reference ops
    except their projection matmul. Costs one extra pass of the stream ops and the
    elementwise ops per step; gradients are those of "none". "stream-ops" (for compiled blocks) forces
    only the two stream ops to be re-run and leaves every other op to torch.compile's partitioner:
    less recompute than "stream", less memory saved (in eager mode it saves less than "none": use
    "stream" there). "stream-post" (compiled blocks) forces only the post op to be re-run: each block's
    middle stream is not stored, its branch inputs are, for one re-run stream kernel per block instead
    of three (RESULTS.md session 12 measures the three policies). ``model.activation_checkpointing``
    (full recompute) takes precedence when on. Training only (no effect with a KV cache or no grad).
    Under ``train.strategy=fsdp`` with bf16 precision only "stream" runs (the others are refused:
    ``training.config.fsdp_recompute_error``)."""

    recompute_blocks: int | str = 1
    """With ``recompute`` on: how many consecutive transformer blocks form one recompute unit, i.e.
    share one stored input stream (PAPER.md §5: "store the stream input once per block of L_r ≈
    sqrt(nL/(n+2)) layers"). "auto" is the paper's optimum L_r ≈ sqrt(nL/(n+2)) sub-layers (L = 2 · n_blocks
    sub-layers), rounded to whole blocks, at least 1: 2 blocks for the 3B and 9B presets, 3 for 27B,
    1 for the tiny one (``residual.recompute.paper_recompute_blocks``). Whole blocks, not sub-layers:
    a block is the LM's compile unit, so a unit's first block runs the others' sub-layers inside its
    own checkpoint and compiled graph [implementation choice]. Units longer than one block store fewer
    streams but re-run, in backward, a whole unit's stream ops at once (n·C per token per sub-layer
    alive while it does). Not with ``train.strategy=fsdp`` (FSDP2 gathers each block's parameters in
    its own forward, which a unit's later blocks do not run). Ignored when ``recompute`` is "none"
    or ``model.activation_checkpointing`` is on. Default 1: the recompute unit of earlier runs."""

    kernel_precision: str = "bf16x2"
    """Operands of the fused kernels' projection v·φ (and its backward) on a bf16 stream: "bf16x2"
    (φ and dm as bf16 hi + lo parts, ≈ fp32 products; the default, closest to PAPER.md's φ in
    tf32/fp32) or "bf16" (rounded once to bf16, one MMA, fp32 accumulate; its dx pass is faster alone,
    the benchmark stack's step time the same within 0.5 %: reports/kernels/RESULTS.md run 140). fp32
    streams always use tf32; the reference backend is always exact fp32. [open: the paper does not
    say which operand format its kernels use]"""

    fuse_branch_norm: bool = True
    """mHC, linked sub-layer: the branch's RMSNorm applied inside the pre op (fused kernels:
    ``kernels/norm_kernels.py``; reference: the same formula) instead of by the branch, which saves
    the norm's own read and write of the branch input and its backward's (≈ 4 of [N, C] per sub-layer).
    The aggregate is normalized before any rounding to the stream dtype. On by default since runs 57–60
    (one H200, paired against the branch's own norm: 0.989–0.994× the step time at C = 2048–4096, and
    0.5 GB less peak; reports/kernels/RESULTS.md, session 12); false = the paper's order of
    rounding (pre's output rounded to the stream dtype, then normalized). Ignored by the residual
    baseline, HC and sublayer_ops="three". [implementation choice, not in the paper]"""

    sublayer_ops: str = "linked"
    """How the mHC sub-layer is split into operators: "linked" (``mhc_pre_linked`` /
    ``mhc_post_res_linked``: split at the branch; the fused backward adds post_res's stream gradient
    inside the projection's dx pass and writes the stream gradient once; the default: on an H200
    2.5-3.7 % faster than "three" at C = 2048, reports/kernels/RESULTS.md runs 13-14) or "three"
    (coefficients, pre, post_res; autograd / Inductor sums the three stream-gradient parts). Same
    values and gradients. Only with all three maps on (ablations always use "three")."""

    proj_handoff: bool = False
    """mHC, linked sub-layer: within each block the attention sub-layer's post op also forms the FFN
    sub-layer's projection (m = x·φ and Σx² of its output, ``mhc_post_res_proj_linked``; on an H200
    with a bf16 stream one Gluon kernel, ``kernels/cross_layer.py``), and the FFN sub-layer's pre op
    skips its own pass over the stream (``mhc_pre_linked(proj=)``). Same values and gradients, up to
    the projection's summation order; saves one read of the n·C stream per block in forward. Within
    a block only: the benchmark stack (``benchmarks/stack_variants.py`` *_xl) also hands it across
    blocks. Off by default: in the benchmark stack (across blocks too) it gave no measurable
    step-time gain on an H200 (reports/kernels/RESULTS.md, runs 120–122).
    Only with sublayer_ops="linked" and all three maps on; ignored otherwise. [implementation choice]"""

    stream_dtype: str = "auto"
    """dtype of the residual stream between sub-layers, for every kind alike: "auto" (the embedding's
    output: fp32 under bf16-mixed autocast, bf16 under bf16-true), "bfloat16" (PAPER.md §1: "stream in
    bf16" [paper]; coefficients stay fp32; applied under autocast or with bf16 weights, so an fp32 model
    run without autocast keeps an fp32 stream) or "float32". A bf16 stream halves the bytes the mHC ops
    move (3B step, H200: mHC kernels 11.7 against 20.7 ms per step), but that step is host-bound:
    mHC on a bf16 stream ran 1.008× and 1.031× mHC on fp32 per round, paired (reports/kernels/RESULTS.md,
    session 23, run 104). Off by default, a deviation from the paper, while it does not pay."""

    def __post_init__(self) -> None:
        if self.kind == "residual":
            self.n = 1  # Pre-Norm residual has one stream by definition

    # ---- derived ----------------------------------------------------------------------------------
    @property
    def num_streams(self) -> int:
        """Streams actually used (1 for the Pre-Norm residual)."""
        return 1 if self.kind == "residual" else self.n

    @property
    def stream_torch_dtype(self):
        """torch dtype the stream is cast to after the embedding, or None ("auto": left as it is)."""
        import torch

        return {"auto": None, "bfloat16": torch.bfloat16, "float32": torch.float32}[self.stream_dtype]

    @property
    def output_init_scale(self) -> float:
        """Divisor for the init std of every branch's output projection: sqrt(n) for HC (HC paper), 1 else."""
        return math.sqrt(self.n) if self.kind == "hc" else 1.0

    @property
    def ablation_name(self) -> str:
        """Table 1 tag: "full" (all three), "res", "res+pre", or the enabled set joined by "+" ("none")."""
        on = [name for name, flag in (("res", self.use_h_res), ("pre", self.use_h_pre),
                                      ("post", self.use_h_post)) if flag]
        if len(on) == 3:
            return "full"
        return "+".join(on) if on else "none"

    # ---- checks / serialisation ------------------------------------------------------------------
    def validate(self) -> "ResidualConfig":
        def choice(name: str, value: Any, allowed: tuple) -> None:
            if value not in allowed:
                raise ValueError(f"residual.{name}={value!r} is unknown; allowed: {', '.join(allowed)}")

        choice("kind", self.kind, KINDS)
        choice("phi_init", self.phi_init, PHI_INITS)
        choice("bias_init", self.bias_init, BIAS_INITS)
        choice("collapse", self.collapse, COLLAPSES)
        choice("kernel_precision", self.kernel_precision, KERNEL_PRECISIONS)
        choice("sublayer_ops", self.sublayer_ops, SUBLAYER_OPS)
        choice("backend", self.backend, BACKENDS)
        choice("recompute", self.recompute, RECOMPUTES)
        choice("stream_dtype", self.stream_dtype, STREAM_DTYPES)
        choice("hc_res_from", self.hc_res_from, HC_RES_FROM)
        rb = self.recompute_blocks
        if rb != "auto" and (not isinstance(rb, int) or isinstance(rb, bool) or rb < 1):
            raise ValueError(f"residual.recompute_blocks={rb!r} is invalid; it must be an integer >= 1 or 'auto'")
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            raise ValueError(f"residual.n={self.n!r} is invalid; it must be an integer >= 1")
        if self.kind == "residual" and self.n != 1:
            raise ValueError(f"residual.n={self.n} is invalid for kind='residual'; it must be 1")
        if not isinstance(self.sinkhorn_iters, int) or self.sinkhorn_iters < 1:
            raise ValueError(f"residual.sinkhorn_iters={self.sinkhorn_iters!r} is invalid; "
                             "it must be an integer >= 1")
        for name in ("sinkhorn_eps", "phi_init_std", "hc_scale"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"residual.{name}={v!r} is invalid; it must be a finite number >= 0")
        for name in ("alpha_init", "bias_logit"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"residual.{name}={v!r} is invalid; it must be a finite number")
        for name in ("use_h_res", "use_h_pre", "use_h_post", "fuse_branch_norm", "hc_scale_learnable",
                     "sinkhorn_shift", "proj_handoff"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"residual.{name}={getattr(self, name)!r} is invalid; "
                                 "it must be true or false")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "ResidualConfig":
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"residual config keys {unknown} are unknown; allowed: {', '.join(sorted(known))}")
        return cls(**d)
