"""Cross-layer forward fusion: sub-layer l's post op also forms sub-layer l+1's projection.

    out, m, ss = mhc_post_res_proj_linked(x_link, f, h_post, h_res, phi_next)   # sub-layer l's post op
    b, hq, hr, xl = mhc_pre_linked(out, phi_next, α, bias, n, ..., proj=(m, ss))  # sub-layer l+1's pre op

``out`` is ``mhc_post_res_linked``'s output; ``m = out_flat·φ_next`` [N, n²+2n] and ``ss = Σ out²``
[N] (fp32, from the rounded stream, as ``launch_proj_fwd`` forms them) are what the next pre op's
projection would compute, so with ``proj=`` it runs only the coefficient epilogue and Sinkhorn
(``coefficients_from_proj``). The backward needs no new kernel: the pre op's backward (linked.py)
differentiates the projection itself (dm·φᵀ + c·x in its dx pass, c from r = sqrt(ss/K + rms_eps);
dφ = xᵀ·dm) from the saved m, r and the x it received. So m and ss are non-differentiable outputs
here, φ_next gets no gradient from this op, and out's gradient is exactly ``mhc_post_res_linked``'s
(``linked._post_backward``, either LINK_MODE).

Kernel: on an H200-class GPU (sm_90), a bf16 stream, n ≤ 4, C % 64 == 0 and "bf16x2" projections,
the warp-specialized persistent Gluon kernel ``gluon_xl.post_res_proj_ws`` at tile ``GLUON_TILE``
(run 117: 189.5 µs against 235.0 for post_res + proj_fwd at C = 2048, 16k tokens; float64 checks in
``benchmarks/gluon_post_res_proj.py``). Everywhere else (and with ``USE_GLUON`` off) the Triton pair
``launch_post_res`` + ``launch_proj_fwd``: the same kernels the plain linked chain runs, so there the
chain with the handoff has the plain chain's bits (tests/kernels/test_cross_layer.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import launch as L
from .registration import fake, op

# post_res_proj_ws's tile: (BC channels, compute warps, x/f stages, BT tokens per tile, φ stages) —
# run 117's best at C = 2048 / 2560 / 4096 (0.81-0.82x the pair, 76-77 % of copy).
GLUON_TILE = (64, 4, 2, 64, 2)
USE_GLUON = True  # False: always the Triton pair (the benchmark's *_xlpair variants)
_SMEM_PER_SM = 232448  # an H200 SM (kernel_resources.SMEM_PER_SM)
_PROGRAMS: dict = {}  # (n, device index) -> persistent programs


def gluon_unusable(x: Tensor, f: Tensor, precision: str) -> str | None:
    """None when ``launch_post_res_proj`` runs the Gluon kernel for these inputs, else why not."""
    N, n, C = x.shape
    bc = GLUON_TILE[0]
    if not USE_GLUON:
        return "cross_layer.USE_GLUON is off"
    if not x.is_cuda or L._interpreted():
        return "not on CUDA"
    if torch.cuda.get_device_capability(x.device) != (9, 0):
        return f"sm_{''.join(map(str, torch.cuda.get_device_capability(x.device)))}, not sm_90 (Hopper wgmma)"
    if x.dtype != torch.bfloat16 or f.dtype != torch.bfloat16:
        return f"stream dtype {x.dtype}, not bfloat16"
    if n > 4 or C % bc or N == 0 or precision != "bf16x2":
        return f"n {n} > 4, C {C} not a multiple of {bc}, N {N} = 0 or precision {precision!r} != 'bf16x2'"
    if not (L._aligned16(x) and L._aligned16(f)):
        return "x or f not 16-byte aligned (TMA)"
    from .gluon_xl import GLUON_ERROR

    return None if GLUON_ERROR is None else f"triton.experimental.gluon does not import ({GLUON_ERROR})"


def _programs(fn, args, kw, device, smem_guess: int) -> int:
    """Persistent grid: #SMs x resident blocks per SM of the compiled kernel (once per n and device;
    from the shared-memory estimate should that fail), as benchmarks/gluon_post_res_proj.py."""
    key = (kw["n"], device.index)
    if key not in _PROGRAMS:
        try:
            k = fn.warmup(*args, grid=(1, ), **kw)
            k._init_handles()
            regs, smem, warps = k.n_regs, k.metadata.shared, k.metadata.num_warps
            by_regs = 65536 // max(1, (regs + 7) // 8 * 8 * 32 * warps)
            bps = max(1, min(by_regs, _SMEM_PER_SM // (smem + 1024), 64 // warps, 32))
        except Exception:  # noqa: BLE001 - only the grid's size depends on it
            bps = max(1, _SMEM_PER_SM // (smem_guess + 2048))
        _PROGRAMS[key] = L._n_sm(device) * bps
    return _PROGRAMS[key]


def gluon_launch(x: Tensor, f: Tensor, h_post: Tensor, h_res: Tensor, phi_buf: Tensor, M: int):
    """(kernel, args, kwargs, (out, m, ss), shared-memory estimate) of one post_res_proj_ws launch at
    GLUON_TILE; phi_buf: φ's bf16 [hi | lo] from launch._phi_parts ("bf16x2"). CPU tensors will do for
    compiling ahead of time (tests/kernels/test_cross_layer.py)."""
    from .gluon_xl import LOADER_REGS, TensorDescriptor, gl, p2, post_res_proj_ws

    N, n, C = x.shape
    K = n * C
    bc, warps, sx, bt, sp = GLUON_TILE
    MP = p2(M)
    L._check(tuple(phi_buf.shape) == (K, 2 * MP) and phi_buf.dtype == torch.bfloat16,
             f"phi_buf {tuple(phi_buf.shape)} {phi_buf.dtype} is invalid; expected bf16 {(K, 2 * MP)}")
    out = torch.empty_like(x)
    m = torch.empty(N, M, device=x.device, dtype=torch.float32)
    ss = torch.empty(N, device=x.device, dtype=torch.float32)
    lx = gl.NVMMASharedLayout.get_default_for([bt, bc], gl.bfloat16)
    lp = gl.NVMMASharedLayout.get_default_for([bc, MP], gl.bfloat16)
    # the streams as one [N, n·C] matrix; TMA zero-fills rows >= N on load and drops them on store
    xd = TensorDescriptor(x.view(N, K), [N, K], [K, 1], [bt, bc], lx)
    fd = TensorDescriptor(f, [N, C], [C, 1], [bt, bc], lx)
    od = TensorDescriptor(out.view(N, K), [N, K], [K, 1], [bt, bc], lx)
    pd = TensorDescriptor(phi_buf, [K, 2 * MP], [2 * MP, 1], [bc, MP], lp)  # hi and lo: two [BC, MP] boxes
    args = (xd, fd, pd, od, h_post, h_res, m, ss, N, C, M)
    kw = dict(n=n, MP=MP, SX=sx, SP=sp, LOADER_REGS=LOADER_REGS, num_warps=warps)
    smem = 2 * (sx * (n + 1) * bt * bc + sp * 2 * n * bc * MP + 2 * n * bt * bc)
    return post_res_proj_ws, args, kw, (out, m, ss), smem


def _launch_gluon(x: Tensor, f: Tensor, h_post: Tensor, h_res: Tensor, phi: Tensor, M: int):
    from .gluon_xl import p2

    buf = L._phi_parts(phi, x, "bf16x2", p2(M))[0]  # [K, 2·MP] bf16: φ_hi | φ_lo
    fn, args, kw, res, smem = gluon_launch(x, f, h_post, h_res, buf, M)
    fn[(min(L._cdiv(x.shape[0], GLUON_TILE[3]), _programs(fn, args, kw, x.device, smem)), )](*args, **kw)
    return res


def launch_post_res_proj(x: Tensor, f: Tensor, h_post: Tensor, h_res: Tensor, phi: Tensor,
                         precision: str = L.PROJ_PRECISION) -> tuple[Tensor, Tensor, Tensor]:
    """(out [N, n, C] in x's dtype, m = out_flat·φ [N, M] fp32, Σ out² [N] fp32); see the module."""
    x, f = x.contiguous(), f.contiguous()
    N, n, C = x.shape
    M = phi.shape[1]
    h_post, h_res = h_post.float().contiguous(), h_res.float().contiguous()
    if N == 0:
        return torch.empty_like(x), x.new_empty(0, M, dtype=torch.float32), x.new_empty(0, dtype=torch.float32)
    if gluon_unusable(x, f, precision) is None:
        return _launch_gluon(x, f, h_post, h_res, phi, M)
    out = L.launch_post_res(x, f, h_post, h_res)
    m, ss = L.launch_proj_fwd(out.view(N, n * C), phi, M, precision)
    return out, m, ss


# ---------------------------------------------------------------- ops
# Opaque (a custom op whatever MHC_KERNEL_OPS says): wrap_triton cannot trace a Gluon launch.
@op("post_res_proj_linked", traceable=False)
def _post_res_proj_linked(x_link: Tensor, f: Tensor, h_post: Tensor, h_res: Tensor, phi_next: Tensor,
                          precision: str) -> tuple[Tensor, Tensor, Tensor]:
    return launch_post_res_proj(x_link, f, h_post, h_res, phi_next, precision)


@fake(_post_res_proj_linked)
def _(x_link, f, h_post, h_res, phi_next, precision):
    N = x_link.shape[0]
    return (torch.empty_like(x_link), x_link.new_empty(N, phi_next.shape[1], dtype=torch.float32),
            x_link.new_empty(N, dtype=torch.float32))


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:4])
    ctx.link_mode = LK.LINK_MODE
    ctx.mark_non_differentiable(output[1], output[2])


def _backward(ctx, g, _g_m, _g_ss):
    # m and ss reach only the next pre op, whose backward differentiates the projection itself
    return (*LK._post_backward(ctx, g), None, None)


_post_res_proj_linked.register_autograd(_backward, setup_context=_setup)


@op("coefficients_from_proj")
def _coefficients_from_proj(m: Tensor, ss: Tensor, alpha: Tensor, bias: Tensor, n: int, K: int, t_max: int,
                            eps: float, rms_eps: float, shift: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The coefficient epilogue + Sinkhorn alone, from m = x·φ [N, M] and Σx² [N] formed elsewhere:
    (H_pre, H_post, H_res, r). No autograd formula: only linked's pre op calls it, and its backward
    differentiates the projection itself."""
    if m.shape[0] == 0:
        e = lambda *s: m.new_empty(s)  # noqa: E731
        return e(0, n), e(0, n), e(0, n, n), e(0)
    return L.launch_coef_fwd(m.contiguous(), ss.contiguous(), alpha, bias, n, K, t_max, eps, rms_eps, shift)


@fake(_coefficients_from_proj)
def _(m, ss, alpha, bias, n, K, t_max, eps, rms_eps, shift=False):
    N = m.shape[0]
    e = lambda *s: m.new_empty(s, dtype=torch.float32)  # noqa: E731
    return e(N, n), e(N, n), e(N, n, n), e(N)


def check_phi_next(x_link: Tensor, phi_next: Tensor, what: str = "mhc_post_res_proj_linked") -> None:
    n, C = x_link.shape[1], x_link.shape[2]
    want = (n * C, n * n + 2 * n)
    if tuple(phi_next.shape) != want:
        raise ValueError(f"{what} phi_next shape {tuple(phi_next.shape)} is invalid; expected {want} "
                         f"(the next sub-layer's φ, [n*C, n*n+2n])")


def mhc_post_res_proj_linked(x_link: Tensor, f: Tensor, h_post: Tensor, h_res: Tensor, phi_next: Tensor, *,
                             precision: str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(``mhc_post_res_linked(x_link, f, h_post, h_res)``, m, Σx²) with m, Σx² the next sub-layer's
    projection of that output through ``phi_next``: pass them as its ``mhc_pre_linked(..., proj=)``."""
    precision = L.PROJ_PRECISION if precision is None else precision
    L._check_precision(precision)
    F._check_post_res_args(x_link, f, h_post, h_res)
    check_phi_next(x_link, phi_next)
    return torch.ops.mhc_repro.post_res_proj_linked(x_link, f.contiguous(), h_post, h_res, phi_next, precision)


# Imported last, as in linked: fused builds its namespaces from this module's functions at import.
from . import fused as F  # noqa: E402
from . import linked as LK  # noqa: E402
