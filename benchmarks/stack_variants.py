"""What a stack-benchmark variant is: the blocks its name builds and the kernel switches it sets.

Shared by bench_mhc.py, ab_stack.py, profile_stack.py and mem_peak.py, so every script times the same
stack on the same inputs. The variant names are listed in bench_mhc.py's docstring.
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama_blocks import Attention, Block, RMSNorm, SwiGLU  # noqa: E402

from mhc_repro.kernels import get_mhc_ops  # noqa: E402


def _hc_package():
    """benchmarks/hc_package.py (importable without the package; see _hc_pkg_version)."""
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    import hc_package

    return hc_package



def _hc_pkg_version():
    """Installed `hyper-connections` version, or None when it is not importable."""
    return _hc_package().hc_package_version()



PRECISION = ["bf16x2"]  # --precision, for variant mhc_fused

LAZY_PRB = [("mma", 16, 128, 4, 3)]  # post_res backward tiles of the *_lazy variants (fastest "mma" of --sweep)



# A variant name: one of BASES, then parts from PARTS joined by "_" (bench_mhc.py's docstring says what
# each does). A part outside PARTS is only a tag, allowed on a variant that --variant-set (ab_stack.py)
# gives launch settings of its own (e.g. mhc_fused_linked_dphi_t64); elsewhere it would silently time
# another variant under the typo's name.
BASES = ("residual", "mhc_ref", "mhc_fused_bf16", "mhc_fused", "hc_pkg")  # longest match first
PARTS = ("linked", "fnorm", "gather", "copy", "rc", "rcops", "rcpost", "savebc", "2mma", "ptr", "acc",
         "mmasum", "dphi", "dphi2", "lazy", "expout", "gcopy", "cg", "xl", "xlpair", "2s")
XL_PARTS = ("xl", "xlpair")  # the cross-layer handoff (needs linked; no recompute parts: not built for them)
HC_PKG_PARTS = ("expout",)  # the package's blocks take none of the kernel / recompute switches


def variant_parts(kind: str) -> tuple[str | None, list[str]]:
    """(base, the parts after it) of a variant name; base None when the name starts with none of BASES."""
    for base in BASES:
        if kind == base or kind.startswith(base + "_"):
            rest = kind[len(base) + 1:]
            return base, rest.split("_") if rest else []
    return None, []


def variant_error(kind: str, tagged: bool = False) -> str | None:
    """Why ``kind`` is not a variant name (one line naming what is allowed), or None when it is one.
    ``tagged``: the variant has --variant-set settings of its own, so parts outside PARTS are tags."""
    base, parts = variant_parts(kind)
    if base is None:
        return f"variant {kind!r} is unknown: it must start with one of {', '.join(BASES)}"
    allowed = HC_PKG_PARTS if base == "hc_pkg" else PARTS
    bad = [p for p in parts if p not in allowed and not (tagged and base != "hc_pkg" and p not in PARTS)]
    if bad:
        return (f"variant {kind!r}: unknown part {bad[0]!r}; after {base} the parts are "
                f"{', '.join('_' + p for p in allowed)}" + ("" if base == "hc_pkg" else
                " (any other part only as the tag of a variant with its own --variant-set)"))
    if "2s" in parts and "cg" in parts:
        return f"variant {kind!r}: _2s (two half batches on two streams) does not combine with _cg"
    xl = [p for p in parts if p in XL_PARTS]
    if xl and ("linked" not in parts or base == "residual" or any(p in ("rc", "rcops", "rcpost") for p in parts)):
        return (f"variant {kind!r}: _{xl[0]} (cross-layer handoff) needs an mHC base with _linked and no "
                "_rc / _rcops / _rcpost part")
    return None


def check_variants(ap, kinds, tagged=()) -> None:
    """``ap.error`` (one line, the allowed names) on the first name that is no variant; ``tagged``: the
    names that carry --variant-set settings (parts outside PARTS allowed as tags)."""
    for kind in kinds:
        err = variant_error(kind, kind in tagged)
        if err:
            ap.error(f"--variants: {err}")


def _expand_outside(kind: str) -> tuple[str, bool]:
    """(the variant name without its "_expout" part, whether it has one): *_expout expands the
    streams before the compiled first block, as up to session 17 (block_fns), for an A/B. (A part,
    not only a suffix: a --variant-set tag may follow it.)"""
    base, parts = variant_parts(kind)
    if base is None or "expout" not in parts:
        return kind, False
    return "_".join([base] + [p for p in parts if p != "expout"]), True


def build(kind: str, c: int, n: int, n_blocks: int, compiled: bool, device):
    kind, outside = _expand_outside(kind)
    base, parts = variant_parts(kind)
    if base == "hc_pkg":  # the hyper-connections package's mHC (optional extra)
        blocks = _hc_package().build_hc_package_blocks(c, n, n_blocks, device, RMSNorm, Attention, SwiGLU)
        return blocks, block_fns(blocks, n, compiled, outside, dynamic=False)
    prec = "bf16" if kind.startswith("mhc_fused_bf16") else PRECISION[0]
    # mhc_ref and every mhc_ref_* the reference ops (up to now only the bare name: mhc_ref_linked got the
    # fused kernels under the reference's name)
    ops = None if base == "residual" else get_mhc_ops("reference" if base == "mhc_ref" else "triton", device, prec)
    torch.manual_seed(0)
    blocks = nn.ModuleList([Block(c, n if ops else 1, ops) for _ in range(n_blocks)]).to(device)
    for name, p in blocks.named_parameters():  # bf16 weights; mHC coefficients stay fp32 (PAPER §1)
        if not name.split(".")[-1] in ("phi", "alpha", "bias"):
            p.data = p.data.to(torch.bfloat16)
    err = variant_error(kind, tagged=kind in VARIANT_SETTINGS)
    if err and any(p in XL_PARTS for p in parts):
        raise ValueError(err)
    xl = any(p in XL_PARTS for p in parts)  # *_xl: each post op forms the next sub-layer's projection
    for b in blocks:
        b.linked = "_linked" in kind  # *_linked: the linked sub-layer pair
        b.fuse_norm = "_fnorm" in kind  # *_linked_fnorm: the branch's RMSNorm fused into its pre
        b.xl = xl
    policy = [p for p in parts if p in ("rc", "rcops", "rcpost")]  # parts, not suffixes: a tag may follow
    if policy:  # PAPER §5 recomputation: each block under the mHC
        # recompute policy ("stream"; *_rcops: "stream-ops", only pre/post_res re-run; *_rcpost:
        # "stream-post", only post_res re-run)
        # (residual_rc: the plain residual under the same policy, for a like-with-like memory ratio)
        from mhc_repro.residual.recompute import checkpoint_block

        for b in blocks:
            mode = {"rcops": "stream-ops", "rcpost": "stream-post"}.get(policy[-1], "stream")
            b.forward = lambda *a, f=b.forward, mode=mode: checkpoint_block(f, *a, mode=mode)
    # *_cg: CUDA graphs (Inductor's "reduce-overhead"), which take the host's launch work (the kernels'
    # Python launchers included) off the step; compare with residual_cg for like with like.
    opts = dict(dynamic=False, mode="reduce-overhead") if "cg" in parts else dict(dynamic=False)
    return blocks, block_fns(blocks, n if ops is not None else 1, compiled, outside, xl=xl, **opts)



def _xl_call(blocks, i: int):
    """Block i of an ``xl`` stack as the step calls it: block 0 takes x, the others (x, (m, Σx²)) from the
    block before; all but the last also form the next block's first projection, through its φ[0], and
    return (x, (m, Σx²)); the last returns x."""
    b, nxt = blocks[i], (blocks[i + 1] if i + 1 < len(blocks) else None)

    def call(state):
        x, proj = (state, None) if i == 0 else state
        return b(x, proj, None if nxt is None else nxt.phi[0])
    return call


def block_fns(blocks, n_streams: int, compiled: bool, expand_outside: bool = False, xl: bool = False,
              **opts) -> list:
    """The blocks as the step calls them, each under torch.compile(**opts) when ``compiled``. With
    n_streams > 1 the first one also expands x0 [B, T, C] into the streams (a broadcast view, as
    mhc_repro.residual.expand_streams) and the last one sums them, each inside its compiled graph, as
    the model does (LM.forward hands both to its first and last block): the broadcast's copy and its
    gradient's sum then form inside those graphs. Up to run 40 the stack summed outside, eagerly, and
    the last block's backward copied the expand-view gradient through a slow strided path (322 µs of
    54 ms at C = 2048, run 38); up to session 17 it expanded outside, and the expand's gradient was an
    eager sum (run 69, C = 2048: 160 µs; the 338 µs eager copy beside it was post_res_bwd's, run 78).
    ``expand_outside`` (the *_expout variants) keeps that old layout, for an A/B. ``xl`` (the *_xl
    variants): the blocks hand the next block's first projection on (``_xl_call``), each compiled alone
    as before, the (m, Σx²) pair an output of one graph and an input of the next."""
    fns = [_xl_call(blocks, i) for i in range(len(blocks))] if xl else list(blocks)
    if n_streams > 1:
        def expand(x):
            return x.unsqueeze(2).expand(-1, -1, n_streams, -1)

        fns[-1] = lambda x, b=fns[-1]: b(x).sum(2)
        if not expand_outside:
            fns[0] = lambda x, f=fns[0]: f(expand(x))
    fns = [torch.compile(f, **opts) if compiled else f for f in fns]
    if n_streams > 1 and expand_outside:
        fns[0] = lambda x, f=fns[0]: f(expand(x))
    return fns


@contextlib.contextmanager
def patched(mod, **values):
    """Module attributes set to ``values`` for the duration, then restored."""
    saved = {k: getattr(mod, k) for k in values}
    for k, v in values.items():
        setattr(mod, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(mod, k, v)



def kernel_switches(kind: str) -> contextlib.ExitStack:
    """The kernel module switches a variant name asks for: *_lazy H_resᵀ g left to Inductor
    (fused.LAZY_RES_DX, only under compile); *_gather the linked pair with LINK_MODE "gather";
    *_copy its "add" mode into a new buffer (linked.ADD_IN_PLACE off); *_savebc (with _rcops): the
    stream-ops policy without its broadcast-copy rule (recompute.COPY_OPS empty), its A/B; *_2mma the
    bf16x2 forward projection as two MMAs (φ_hi, φ_lo) instead of one on [φ_hi | φ_lo]; *_ptr the
    projection backward's pointer dx pass (launch._PROJ_BWD_TMA None) whatever the TMA tile; *_acc its
    TMA dx pass with the MMAs accumulating into the elementwise terms (launch.PROJ_DX_TMA_ACC, the
    default), *_mmasum with the MMA results summed after them (the pointer kernel's order); *_dphi its
    TMA dx pass forming dφ too (launch.PROJ_DX_TMA_DPHI 1; *_dphi2 mode 2). Then the variant's own launch settings
    (VARIANT_SETTINGS, from --variant-set), e.g. another tile for one variant of an A/B. *_gcopy:
    post_res_bwd copies its stream gradient contiguous first (launch.PRB_G_BY_STRIDES off, as up
    to session 18). *_xlpair: the *_xl stack with the Triton pair post_res + proj_fwd in each
    cross-layer post op instead of the Gluon kernel (cross_layer.USE_GLUON off). (*_expout, a suffix,
    is no kernel switch: see build.)"""
    from mhc_repro.kernels import fused, launch, linked
    from mhc_repro.residual import recompute

    stack = contextlib.ExitStack()
    if "lazy" in variant_parts(kind)[1]:
        stack.enter_context(patched(fused, LAZY_RES_DX=True))
        stack.enter_context(patched(launch, _PRB=LAZY_PRB[0]))
    if "_gather" in kind:
        stack.enter_context(patched(linked, LINK_MODE="gather"))
    if "_copy" in kind:
        stack.enter_context(patched(linked, ADD_IN_PLACE=False))
    if "_savebc" in kind:
        stack.enter_context(patched(recompute, COPY_OPS=frozenset()))
    if "_2mma" in kind:
        stack.enter_context(patched(launch, PROJ_FWD_MERGED=False))
    if "_ptr" in kind:
        stack.enter_context(patched(launch, _PROJ_BWD_TMA=None))
    if "_acc" in kind:
        stack.enter_context(patched(launch, PROJ_DX_TMA_ACC=True))
    if "_mmasum" in kind:
        stack.enter_context(patched(launch, PROJ_DX_TMA_ACC=False))
    if "_dphi" in kind:
        stack.enter_context(patched(launch, PROJ_DX_TMA_DPHI=2 if "_dphi2" in kind else 1))
    if "_gcopy" in kind:
        stack.enter_context(patched(launch, PRB_G_BY_STRIDES=False))
    if "xlpair" in variant_parts(kind)[1]:
        from mhc_repro.kernels import cross_layer

        stack.enter_context(patched(cross_layer, USE_GLUON=False))
    if VARIANT_SETTINGS.get(kind):
        stack.enter_context(patched(launch, **VARIANT_SETTINGS[kind]))
    return stack


# launch constants set for one variant only: {variant: {NAME: value}} (variant_settings)
VARIANT_SETTINGS: dict[str, dict] = {}


def parse_settings(pairs) -> dict:
    """``NAME=VALUE`` pairs (Python literals, NAME a constant of mhc_repro.kernels.launch) -> dict."""
    import ast

    from mhc_repro.kernels import launch

    values = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not hasattr(launch, name):
            raise SystemExit(f"--set {pair!r}: expected NAME=VALUE with NAME a constant of mhc_repro.kernels.launch")
        try:
            values[name] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise SystemExit(f"--set {pair!r}: VALUE must be a Python literal (True, 3, (64, 128, 256, 3, 4))")
    return values


def variant_settings(specs) -> dict:
    """``VARIANT:NAME=VALUE`` specs (--variant-set) into VARIANT_SETTINGS; returns them."""
    for spec in specs:
        kind, sep, pair = spec.partition(":")
        if not sep or not kind:
            raise SystemExit(f"--variant-set {spec!r}: expected VARIANT:NAME=VALUE")
        VARIANT_SETTINGS.setdefault(kind, {}).update(parse_settings([pair]))
    return dict(VARIANT_SETTINGS)



def launch_settings(pairs) -> dict:
    """Apply ``NAME=VALUE`` pairs (Python literals) to mhc_repro.kernels.launch; returns them."""
    from mhc_repro.kernels import launch

    values = parse_settings(pairs)
    for name, value in values.items():
        setattr(launch, name, value)
    return values



def stack_forward(fns, x0):
    """The stack's output from x0 [B, T, C]: every block in turn (an n-stream stack's first block
    expands the streams and its last sums them, see block_fns).

    The n-stream lives only inside this function, as inside a model's forward: once collapsed it is
    freed (up to run 17 the benchmark held the last stream, 4 units of [N, C], through the whole
    backward, which a model does not; it inflated mHC's peak, not the residual's)."""
    x = x0
    for f in fns:
        x = f(x)
    return x


def add_stack_args(ap) -> None:
    """The stack's shape options (read by stack_inputs), shared by every stack benchmark script."""
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--blocks", type=int, default=4, help="blocks in the stack (C >= 4096: --blocks-large)")
    ap.add_argument("--blocks-large", type=int, default=2)



HEAD_DIM = 128  # llama_blocks.Attention's head width: C must be a multiple of it


def check_stack_args(ap, args) -> None:
    """``ap.error`` (one line) on a shape the stack cannot take: C not a positive multiple of the head
    width (every variant would fail in its attention, after the per-kernel table), --tokens not a
    positive multiple of --seq (tokens // seq sequences: 0, or fewer tokens than asked), n < 1."""
    bad = [c for c in args.C if c <= 0 or c % HEAD_DIM]
    if bad:
        ap.error(f"--C {bad[0]}: must be a positive multiple of {HEAD_DIM} (the attention's head width), e.g. 2048")
    if args.seq <= 0 or args.tokens <= 0 or args.tokens % args.seq:
        ap.error(f"--tokens {args.tokens} must be a positive multiple of --seq {args.seq}")
    if args.n < 1 or args.blocks < 1 or args.blocks_large < 1:
        ap.error(f"--n {args.n}, --blocks {args.blocks}, --blocks-large {args.blocks_large}: each must be >= 1")


def stack_inputs(c: int, args, dev) -> tuple:
    """(blocks in the stack, x0, dout) at width c: bf16 [tokens / seq, seq, c], seeded by c, so every
    variant and every script (bench_mhc, ab_stack) times the same inputs."""
    nb = args.blocks if c < 4096 else args.blocks_large
    g = torch.Generator(device=dev).manual_seed(c)
    B = args.tokens // args.seq
    x0 = torch.randn(B, args.seq, c, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
    dout = torch.randn(B, args.seq, c, device=dev, dtype=torch.bfloat16, generator=g)
    return nb, x0, dout



def two_stream_step(fns, params, x0, dout):
    """*_2s: the step as two half batches in flight at once, each on its own CUDA stream, the blocks
    issued in turn (A's block i, B's block i, ...), so that one half's memory-bound kernels can run
    beside the other's GEMMs (the single-GPU form of overlapping two micro-batches). Autograd runs each
    node's backward on its forward's stream and orders the nodes by creation, so the backward
    interleaves the same way. Off CUDA the halves run one after the other (same arithmetic, for tests)."""
    halves, douts = x0.chunk(2, dim=0), dout.chunk(2, dim=0)
    cuda = x0.is_cuda
    streams = [torch.cuda.Stream(x0.device), torch.cuda.Stream(x0.device)] if cuda else [None, None]

    def on(i):
        return torch.cuda.stream(streams[i]) if cuda else contextlib.nullcontext()

    def step():
        for p in params:
            p.grad = None
        main = torch.cuda.current_stream(x0.device) if cuda else None
        if cuda:
            for st in streams:
                st.wait_stream(main)
        xs = list(halves)
        for f in fns:
            for i in (0, 1):
                with on(i):
                    xs[i] = f(xs[i])
        torch.autograd.backward(xs, list(douts))
        if cuda:
            for st in streams:
                main.wait_stream(st)
    return step


def stack_step(kind, compiled, c, n, n_blocks, x0, dout):
    """(step, forward, blocks) of a variant: the timed training step (grads cleared, forward, backward)
    and its forward alone; the blocks hold the parameters (keep them alive while timing)."""
    blocks, fns = build(kind, c, n, n_blocks, compiled, x0.device)
    params = list(blocks.parameters())
    if "2s" in variant_parts(kind)[1]:
        if x0.shape[0] % 2:
            raise ValueError(f"variant {kind!r}: _2s splits the batch in two halves; got {x0.shape[0]} sequences")
        return two_stream_step(fns, params, x0, dout), (lambda: stack_forward(fns, x0)), blocks

    def forward():
        return stack_forward(fns, x0)

    def step():
        for p in params:
            p.grad = None
        forward().backward(dout)

    return step, forward, blocks
