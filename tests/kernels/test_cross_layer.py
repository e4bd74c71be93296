"""The cross-layer handoff (kernels/cross_layer.py): sub-layer l's post op forms sub-layer l+1's
projection (m, Σx²), which its pre op takes with ``proj=`` instead of forming it.

CPU (interpreter): a chain of linked sub-layers with the handoff against the plain linked chain —
the same kernels run there (post_res + proj_fwd), so outputs and every gradient must be the same
bits — and against the float64 reference chain; the reference namespace's handoff against its plain
chain; torch.compile(fullgraph) of the chain. CUDA (``gpu``): the Gluon kernel against float64 and
the Triton pair, and the chain's gradients against the plain chain's with the Gluon kernel in it.
"""

from __future__ import annotations

import pytest
import torch

from mhc_repro.kernels import get_mhc_ops
from mhc_repro.residual import mhc_ops

NAMES = ["y", "x", "phi", "alpha", "bias", "norm_w", "branch_w"]


def _rel(a, b) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _params(L: int, n: int, C: int, device, seed: int, dtype=torch.float32):
    """Per sub-layer φ, α, bias (fp32 or float64), the fused norm's weight and a branch weight."""
    g = torch.Generator().manual_seed(seed)
    M = n * n + 2 * n
    r = lambda *s, scale=1.0: (scale * torch.randn(*s, generator=g)).to(device)  # noqa: E731
    return dict(phi=r(L, n * C, M, scale=0.5 / C ** 0.5).to(dtype),
                alpha=(0.5 + torch.rand(L, 3, generator=g)).to(device, dtype),
                bias=r(L, M, scale=0.5).to(dtype), norm_w=(1 + 0.1 * r(L, C)).to(dtype), branch_w=r(L, C).to(dtype))


def chain(ops, x, p, n: int, xl: bool, norm: bool = True):
    """L linked sub-layers: branch tanh(b · w_l); with ``xl`` each post op but the last forms the next
    sub-layer's projection and that pre op takes it."""
    L = p["phi"].shape[0]
    proj = None
    for l in range(L):
        kw = dict(norm_weight=p["norm_w"][l]) if norm else {}
        if proj is not None:
            kw["proj"] = proj
        b, hq, hr, xl_ = ops.mhc_pre_linked(x, p["phi"][l], p["alpha"][l], p["bias"][l], n, **kw)
        f = torch.tanh(b * p["branch_w"][l].to(b.dtype))
        if xl and l + 1 < L:
            x, m, ss = ops.mhc_post_res_proj_linked(xl_, f, hq, hr, p["phi"][l + 1])
            assert not m.requires_grad and not ss.requires_grad
            proj = (m, ss)
        else:
            x, proj = ops.mhc_post_res_linked(xl_, f, hq, hr), None
    return x


def _run(ops, x0, p0, n, xl, norm=True, fn=None):
    """(y, dy/dx, d/d every parameter) for a fixed cotangent."""
    x = x0.detach().clone().requires_grad_()
    p = {k: v.detach().clone().requires_grad_() for k, v in p0.items()}
    y = (fn or chain)(ops, x, p, n, xl, norm)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)).to(y.device, y.dtype)
    leaves = [x, *p.values()]
    # allow_unused: norm_w without the fused norm
    grads = torch.autograd.grad((y.double() * w.double()).sum(), leaves, allow_unused=True)
    return [y.detach()] + [torch.zeros_like(t) if d is None else d for t, d in zip(leaves, grads)]


@pytest.fixture(params=["add", "gather"])
def link_mode(request, monkeypatch):
    from mhc_repro.kernels import linked

    monkeypatch.setattr(linked, "LINK_MODE", request.param)
    return request.param


@pytest.mark.cpu_cover  # CPU: every case, the link modes in turn (tests/conftest.py)
@pytest.mark.parametrize("N,n,C,L,dtype,norm", [
    (37, 4, 64, 3, torch.float32, True), (37, 2, 48, 2, torch.float32, False),
    (37, 1, 32, 2, torch.float32, True), (37, 4, 64, 2, torch.bfloat16, True)])
def test_chain_with_handoff_is_the_plain_chain(fused, device, link_mode, N, n, C, L, dtype, norm):
    """Outputs and every gradient (x, each sub-layer's φ, α, bias, norm and branch weights). Where the
    Triton pair runs (everywhere but the Gluon path: CPU, fp32, n > 4, ...) they are the same bits."""
    from mhc_repro.kernels import cross_layer

    x0 = torch.randn(N, n, C, generator=torch.Generator().manual_seed(N + n)).to(device, dtype)
    p0 = _params(L, n, C, device, seed=N * n + C)
    plain = _run(fused.ops(), x0, p0, n, xl=False, norm=norm)
    got = _run(fused.ops(), x0, p0, n, xl=True, norm=norm)
    exact = cross_layer.gluon_unusable(x0, x0[:, 0], "bf16x2") is not None
    for name, a, b in zip(NAMES, got, plain):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        if exact:
            assert torch.equal(a, b), (name, _rel(a, b))
        else:  # the Gluon kernel rounds out and sums m in its own order
            assert _rel(a, b) < 1e-2, (name, _rel(a, b))


def test_chain_with_handoff_matches_float64_reference(fused, device):
    N, n, C, L = 37, 4, 64, 3
    x0 = torch.randn(N, n, C, generator=torch.Generator().manual_seed(1)).to(device)
    p0 = _params(L, n, C, device, seed=2)
    got = _run(fused.ops(), x0, p0, n, xl=True)
    ref = _run(mhc_ops, x0.double(), {k: v.double() for k, v in p0.items()}, n, xl=False)
    for name, a, b in zip(NAMES, got, ref):
        assert _rel(a, b) < (2e-5 if device == "cpu" else 2e-2), (name, _rel(a, b))  # CUDA: tf32 products, 3 layers


@pytest.mark.parametrize("n,norm", [(4, True), (2, False), (1, True)])
def test_reference_handoff_is_the_reference_chain(n, norm):
    """The reference namespace (get_mhc_ops("reference")): float64, the handoff's values and gradients
    against the chain that forms every projection itself (r from Σx² / K instead of the mean: ulps)."""
    N, C, L = 23, 24, 3
    x0 = torch.randn(N, n, C, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    p0 = {k: v.double() for k, v in _params(L, n, C, "cpu", seed=5 + n).items()}
    ops = get_mhc_ops("reference")
    for name, a, b in zip(NAMES, _run(ops, x0, p0, n, xl=True, norm=norm), _run(ops, x0, p0, n, xl=False, norm=norm)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def test_handoff_compiles_fullgraph(fused, device):
    """torch.compile(fullgraph=True) of a 3-sub-layer chain with the handoff: no graph break, the eager
    values and gradients. CPU: aot_eager, fp32; CUDA: Inductor, bf16 stream (the Gluon kernel on sm_90)."""
    N, n, C, L = 21, 4, 64, 3
    ops = fused.ops()
    x0 = torch.randn(N, n, C, generator=torch.Generator().manual_seed(3)).to(device)
    x0 = x0 if device == "cpu" else x0.bfloat16()
    p0 = _params(L, n, C, device, seed=4)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x, p: chain(ops, x, p, n, True),
                             backend="aot_eager" if device == "cpu" else "inductor", fullgraph=True)
    try:
        got = _run(ops, x0, p0, n, xl=True, fn=lambda _ops, x, p, *_: compiled(x, p))
    finally:
        torch._dynamo.reset()
    for name, a, b in zip(NAMES, got, _run(ops, x0, p0, n, xl=True)):
        if device == "cpu":
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
        else:  # Inductor keeps bf16 pointwise math in fp32 where eager rounds each op
            assert _rel(a, b) < 2e-2, (name, _rel(a, b))


@pytest.mark.parametrize("which", ["fused", "reference"])
def test_pre_op_takes_the_projection_it_is_given(fused, which):
    """The pre op's coefficients come from the (m, Σx²) handed to it, not from a projection of its own:
    a perturbed m or Σx² changes them (the parity tests alone would pass if proj= were ignored)."""
    ops = fused.ops() if which == "fused" else get_mhc_ops("reference")
    N, n, C = 9, 2, 16
    x0 = torch.randn(N, n, C, generator=torch.Generator().manual_seed(0))
    p = _params(2, n, C, "cpu", seed=1)
    b, hq, hr, xl = ops.mhc_pre_linked(x0, p["phi"][0], p["alpha"][0], p["bias"][0], n)
    x, m, ss = ops.mhc_post_res_proj_linked(xl, torch.tanh(b), hq, hr, p["phi"][1])
    args = (x, p["phi"][1], p["alpha"][1], p["bias"][1], n)
    base = ops.mhc_pre_linked(*args)[:3]
    same = ops.mhc_pre_linked(*args, proj=(m, ss))[:3]
    for a, c in zip(same, base):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-6)
    for proj in ((m * 1.01, ss), (m, ss * 1.5)):
        moved = ops.mhc_pre_linked(*args, proj=proj)[:3]
        assert not torch.allclose(moved[1], base[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("op,dtype", [("post_res_proj_linked", torch.float32), ("post_res_proj_linked", torch.bfloat16),
                                      ("coefficients_from_proj", torch.float32)])
def test_opcheck(fused, device, op, dtype):
    """Schema, fake (shapes, dtypes, strides of the real outputs) and autograd registration. bf16 with
    n = 4, C = 64 is the Gluon kernel's case on an sm_90 device."""
    N, n, C = 5, 4, 64
    g = torch.Generator().manual_seed(0)
    M = n * n + 2 * n
    x, f = torch.randn(N, n, C, generator=g).to(device, dtype), torch.randn(N, C, generator=g).to(device, dtype)
    hp = (torch.rand(N, n, generator=g) + 0.5).to(device)
    hr = torch.softmax(torch.randn(N, n, n, generator=g), -1).to(device)
    phi = (0.1 * torch.randn(n * C, M, generator=g)).to(device)
    if op == "post_res_proj_linked":
        args = tuple(t.requires_grad_() for t in (x, f, hp, hr)) + (phi, "bf16x2")
        utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    else:
        m, ss = torch.randn(N, M, generator=g).to(device), (1 + torch.rand(N, generator=g)).to(device)
        args = (m, ss, torch.rand(3).to(device) + 0.5, 0.1 * torch.randn(M).to(device), n, n * C, 20, 1e-6, 1e-6, False)
        utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(getattr(torch.ops.mhc_repro, op).default, args, test_utils=utils)


def test_zero_tokens(fused, device):
    n, C = 4, 16
    x0 = torch.zeros(0, n, C, device=device)
    y, dx, dphi, *_ = _run(fused.ops(), x0, _params(2, n, C, device, seed=0), n, xl=True)
    assert y.shape == dx.shape == (0, n, C) and float(dphi.abs().sum()) == 0.0


@pytest.mark.parametrize("which", ["fused", "reference"])
def test_bad_phi_next_is_one_clear_error(fused, which):
    ops = fused.ops() if which == "fused" else get_mhc_ops("reference")
    x, f, hp, hr = torch.zeros(3, 2, 8), torch.zeros(3, 8), torch.zeros(3, 2), torch.zeros(3, 2, 2)
    with pytest.raises(ValueError) as e:
        ops.mhc_post_res_proj_linked(x, f, hp, hr, torch.zeros(16, 9))
    assert str(e.value) == ("mhc_post_res_proj_linked phi_next shape (16, 9) is invalid; expected (16, 8) "
                            "(the next sub-layer's φ, [n*C, n*n+2n])")


def test_bad_proj_is_one_clear_error(fused):
    x, phi, a, b = torch.zeros(3, 2, 8), torch.zeros(16, 8), torch.zeros(3), torch.zeros(8)
    with pytest.raises(ValueError, match=r"mhc_pre_linked proj \[\(\(3, 7\), torch.float32\), \(\(3,\), "
                                         r"torch.float32\)\] is invalid; expected \(m \(3, 8\), Σx² \(3,\)\)"):
        fused.ops().mhc_pre_linked(x, phi, a, b, 2, proj=(torch.zeros(3, 7), torch.zeros(3)))


def test_gluon_is_not_used_off_hopper_or_switched_off(fused, monkeypatch):
    from mhc_repro.kernels import cross_layer

    x = torch.zeros(64, 4, 64, dtype=torch.bfloat16)
    assert cross_layer.gluon_unusable(x, x[:, 0], "bf16x2") == "not on CUDA"
    monkeypatch.setattr(cross_layer, "USE_GLUON", False)
    assert cross_layer.gluon_unusable(x, x[:, 0], "bf16x2") == "cross_layer.USE_GLUON is off"


# ---------------------------------------------------------------- CUDA: the Gluon kernel
def _out_bound(x, f, hp, hr):
    """float64 post_res and its bound (benchmarks/gluon_post_res_proj.py out_reference): half a bf16
    step of |ref| plus fp32 accumulation error."""
    xd, fd = x.double(), f.double()
    ref = torch.einsum("tij,tjc->tic", hr.double(), xd) + hp.double()[..., None] * fd[:, None]
    mag = torch.einsum("tij,tjc->tic", hr.double().abs(), xd.abs()) + hp.double().abs()[..., None] * fd.abs()[:, None]
    return ref, (2.0 ** -8 * ref.abs() + 2.0 ** -20 * mag).clamp_min(1e-300)


def _max_rel(got, ref) -> float:
    return float((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


def _gluon_or_skip(x):
    from mhc_repro.kernels import cross_layer

    why = cross_layer.gluon_unusable(x, x[:, 0], "bf16x2")
    if why is not None and torch.cuda.get_device_capability() == (9, 0):
        pytest.fail(f"the Gluon kernel should run on this sm_90 device: {why}")
    if why is not None:
        pytest.skip(why)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("N,n,C", [(16384, 4, 2048), (4999, 4, 2048), (1001, 2, 256), (777, 1, 128)])
def test_gluon_kernel_against_float64_and_the_triton_pair(fused, N, n, C, monkeypatch):
    from mhc_repro.kernels import cross_layer
    from mhc_repro.kernels import launch as L

    g = torch.Generator().manual_seed(N + C)
    M = n * n + 2 * n
    x = torch.randn(N, n, C, generator=g).bfloat16().cuda()
    f = torch.randn(N, C, generator=g).bfloat16().cuda()
    hp = (2 * torch.sigmoid(torch.randn(N, n, generator=g))).cuda()
    hr = torch.softmax(torch.randn(N, n, n, generator=g), -1).cuda()
    phi = (0.02 * torch.randn(n * C, M, generator=g)).cuda()
    _gluon_or_skip(x)
    ran = []
    monkeypatch.setattr(cross_layer, "_launch_gluon", lambda *a, f=cross_layer._launch_gluon: ran.append(1) or f(*a))
    with L.direct_launches():
        out, m, ss = cross_layer.launch_post_res_proj(x, f, hp, hr, phi, "bf16x2")
        pair_out = L.launch_post_res(x, f, hp, hr)
        pair_m, pair_ss = L.launch_proj_fwd(pair_out.view(N, n * C), phi, M, "bf16x2")
    assert ran == [1]
    ref, bound = _out_bound(x, f, hp, hr)
    # Σx²: the Gluon kernel sums in fp32 on the CUDA cores (≤ 1e-5); proj_fwd forms it on the tensor
    # cores (launch._PROJ_FWD's "diag" mode), whose fp32 accumulation is coarser (3.4e-5 at C = 2048 on
    # the H200, session 27): 1e-4 there and between the two
    for name, o, mm, s, ss_tol in (("gluon", out, m, ss, 1e-5), ("pair", pair_out, pair_m, pair_ss, 1e-4)):
        v = o.double().reshape(N, n * C)  # m and Σx² of the stream this kernel wrote
        err = float(((o.double() - ref).abs() / bound).max())
        assert err <= 1.0, (name, err)
        assert _max_rel(mm, v @ phi.double()) <= 1e-4, (name, _max_rel(mm, v @ phi.double()))
        assert _max_rel(s, v.square().sum(1)) <= ss_tol, (name, _max_rel(s, v.square().sum(1)))
    assert _max_rel(m, pair_m.double()) <= 1e-4 and _max_rel(ss, pair_ss.double()) <= 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("N,C", [(999, 256), (4096, 2048)])
def test_gluon_chain_gradients_match_the_plain_chain(fused, N, C, monkeypatch):
    """bf16 stream, "bf16x2": the chain with the Gluon kernel in its post ops against the plain linked
    chain (all gradients), and no further from the reference chain (same bf16 inputs) than it."""
    from mhc_repro.kernels import cross_layer

    n, L = 4, 3
    x0 = torch.randn(N, n, C, generator=torch.Generator().manual_seed(C)).cuda().bfloat16()
    _gluon_or_skip(x0)
    p0 = _params(L, n, C, "cuda", seed=C)
    calls = []
    monkeypatch.setattr(cross_layer, "_launch_gluon", lambda *a, f=cross_layer._launch_gluon: calls.append(1) or f(*a))
    ops = fused.ops("bf16x2")
    got = _run(ops, x0, p0, n, xl=True)
    assert len(calls) == L - 1
    plain = _run(ops, x0, p0, n, xl=False)
    ref = _run(mhc_ops, x0, p0, n, xl=False)  # the same bf16 inputs and roundings, fp32 coefficients
    for name, a, b, r in zip(NAMES, got, plain, ref):
        assert _rel(a, b) < 1e-2, (name, _rel(a, b))
        assert _rel(a, r) < 1.5 * _rel(b, r) + 1e-3, (name, _rel(a, r), _rel(b, r))  # no further from it


_AOT = """
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import make_backend
from triton.experimental.gluon._runtime import GluonASTSource
from triton.runtime.jit import create_function_from_signature
from mhc_repro.kernels import cross_layer
target = GPUTarget("cuda", 90, 32)
backend = make_backend(target)
for N, n, C in ((128, 4, 2048), (128, 2, 256), (128, 1, 64)):
    M = n * n + 2 * n
    x, f = torch.empty(N, n, C, dtype=torch.bfloat16), torch.empty(N, C, dtype=torch.bfloat16)
    buf = torch.empty(n * C, 2 * max(16, 1 << (M - 1).bit_length()), dtype=torch.bfloat16)
    fn, args, kw, _, smem = cross_layer.gluon_launch(x, f, torch.empty(N, n), torch.empty(N, n, n), buf, M)
    kw = dict(kw, debug=False, instrumentation_mode="")
    bound, spec, options = create_function_from_signature(fn.signature, fn.params, backend)(*args, **kw)
    options, sig, constexprs, attrs = fn._pack_args(backend, kw, bound, spec, options)
    k = triton.compile(GluonASTSource(fn, sig, constexprs, attrs), target=target, options=options.__dict__)
    assert k.metadata.shared + 1024 <= 232448 and k.metadata.shared >= smem, (n, C, k.metadata.shared, smem)
    print("compiled", n, C, k.metadata.shared)
print("ok")
"""


def test_gluon_launch_compiles_for_sm90():
    """Ahead of time, no GPU: the package's launch of post_res_proj_ws (descriptors, arguments,
    constexprs) compiles for sm_90 under Triton 3.6, the device's version (Gluon's API moves between
    releases; skipped under any other), as benchmarks/gluon_post_res_proj.py --compile-only does for
    the probe. In a child process: without TRITON_INTERPRET."""
    import os
    import subprocess
    import sys

    triton = pytest.importorskip("triton")
    if not triton.__version__.startswith("3.6"):
        pytest.skip(f"triton {triton.__version__}: the Gluon kernels target the device's 3.6")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)  # the same Triton
    proc = subprocess.run([sys.executable, "-c", _AOT], env=env, cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr[-3000:]
