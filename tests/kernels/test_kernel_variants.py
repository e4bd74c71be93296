"""Every tile / precision variant the benchmark sweep may pick computes the same thing.

The sweep (benchmarks/bench_mhc.py --sweep) swaps module-level tiles in ``launch``; each variant must
match the fp64 reference like the defaults do, so a faster choice cannot be a wrong one.
"""

from __future__ import annotations

import pytest
import torch

from .test_fused_parity import REF, _compare, _inputs, _run

VARIANTS = {
    "proj K split 3": dict(_PROJ_FWD=(16, 32, 2, False, 4, 3)),
    "proj reload, 2 warps": dict(_PROJ_FWD=(16, 32, 2, True, 2, 1), _PROJ_BWD=(16, 32, 2, True, 2, False),
                                 _PROJ_BWD_GEMM=None),
    "proj bwd dphi fused": dict(_PROJ_BWD=(16, 32, 2, False, 4, False), _PROJ_BWD_GEMM=None),
    "proj bwd dphi transposed": dict(_PROJ_BWD=(16, 32, 2, False, 4, True), _PROJ_BWD_GEMM=None),
    "proj fwd sumsq in registers": dict(_PROJ_FWD=(16, 32, 2, False, 4, 1)),
    "proj fwd sumsq on tensor cores": dict(_PROJ_FWD=(16, 32, 2, "diag", 4, 1)),
    "proj fwd sumsq on tensor cores, K split 3": dict(_PROJ_FWD=(16, 32, 2, "diag", 4, 3)),
    "proj fwd hi|lo merged": dict(PROJ_FWD_MERGED=True, _PROJ_FWD=(16, 32, 2, "diag", 4, 2)),
    "proj fwd hi|lo as two MMAs": dict(PROJ_FWD_MERGED=False),
    "proj bwd dx kernel + dphi gemm": dict(_PROJ_BWD_GEMM=(16, 32, 32, 2, 4)),
    # (_PRB_FP32 None: these fp32 cases run the _PRB tile; the bf16 cases run it anyway)
    "post_res_bwd mma": dict(_PRB=("mma", 16, 32, 4, 2), _PRB_FP32=None),
    "post_res_bwd mma 32 rows": dict(_PRB=("mma", 32, 16, 4, 4), _PRB_FP32=None),
    "post_res_bwd split": dict(_PRB=("split", 4, 32, 4, 3), _PRB_FP32=None),
    "post_res_bwd split odd": dict(_PRB=("split", 2, 16, 2, 3), _PRB_FP32=None),
    "post_res_bwd loop": dict(_PRB=("loop", 4, 32, 4, 3), _PRB_FP32=None),
    "post_res_bwd fp32 tile mma": dict(_PRB_FP32=("mma", 16, 64, 2, 3)),
    "sinkhorn 8 tokens, 1 warp": dict(_SINKHORN=(8, 1)),
}


@pytest.fixture
def patched(fused, launch, monkeypatch, request):
    for k, v in VARIANTS[request.param].items():
        monkeypatch.setattr(launch, k, v)  # raises if the tile is not there: no silent no-op
    return fused


# CPU (tests/conftest.py): every variant, the two shapes in turn (test_variant_bf16_stream runs every one)
@pytest.mark.cpu_cover
@pytest.mark.parametrize("patched", list(VARIANTS), indirect=True)
@pytest.mark.parametrize("N,n,C", [(37, 4, 67), (11, 3, 40)])
def test_variant_matches_fp64_reference(patched, device, N, n, C):
    inp = _inputs(N, n, C, torch.float32, device, seed=N + n)
    got = _run(patched.ops(), inp, n, t_max=20, upcast=False)
    ref = _run(REF, inp, n, t_max=20, upcast=True)
    _compare(got, ref, tol=2e-5 if device == "cpu" else 5e-3)


@pytest.mark.parametrize("N,n,C", [(33, 4, 80), (9, 8, 40)])
def test_bf16_precision_matches_reference(fused, device, N, n, C):
    """precision="bf16": φ and dm rounded once to bf16 (one MMA each) — close to the reference within
    bf16 rounding, and visibly less exact than "bf16x2" (so the switch really changes the kernels)."""
    inp = _inputs(N, n, C, torch.bfloat16, device, seed=5 * N + n)
    ref64 = _run(REF, inp, n, t_max=20, upcast=True)
    got = _run(fused.ops("bf16"), inp, n, t_max=20, upcast=False)
    _compare(got, _run(REF, inp, n, t_max=20, upcast=False), tol=2e-2)
    _compare(got[:3], ref64[:3], tol=5e-3)

    def err(a, b):
        return ((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm()).item()

    x2 = _run(fused.ops("bf16x2"), inp, n, t_max=20, upcast=False)
    e1 = max(err(a, b) for a, b in zip(got[:3], ref64[:3]))
    e2 = max(err(a, b) for a, b in zip(x2[:3], ref64[:3]))
    assert e2 < e1, f"bf16x2 coefficients (err {e2:.2e}) should be more exact than bf16 ({e1:.2e})"


def test_bad_precision_raises(fused):
    with pytest.raises(ValueError, match="precision 'fp8' is unknown; allowed: bf16x2, bf16"):
        fused.ops("fp8")


def test_precision_choices_agree_with_config(launch):
    from mhc_repro.residual.config import KERNEL_PRECISIONS, ResidualConfig

    assert tuple(KERNEL_PRECISIONS) == tuple(launch.PROJ_PRECISIONS)
    with pytest.raises(ValueError, match="residual.kernel_precision='fp8' is unknown"):
        ResidualConfig(kind="mhc", kernel_precision="fp8").validate()


@pytest.mark.parametrize("patched", list(VARIANTS), indirect=True)
def test_variant_bf16_stream(patched, device):
    """bf16 stream: on CUDA the bf16 MMA paths (hi/lo coefficient splits) of every variant."""
    N, n, C = 33, 4, 80
    inp = _inputs(N, n, C, torch.bfloat16, device, seed=17)
    got = _run(patched.ops(), inp, n, t_max=20, upcast=False)
    _compare(got, _run(REF, inp, n, t_max=20, upcast=False), tol=2e-2)


@pytest.mark.parametrize("N,n,C", [(37, 4, 67), (20, 3, 48), (9, 8, 40)])
def test_merged_hi_lo_projection_is_the_same_product(launch, device, monkeypatch, N, n, C):
    """PROJ_FWD_MERGED (one MMA on [φ_hi | φ_lo]) forms the same bf16x2 products as two MMAs: equal to
    the unmerged kernel up to fp32 summation order, and ≈ fp32-exact against fp64 (bf16 alone is not)."""
    g = torch.Generator().manual_seed(N * n)
    M = n * n + 2 * n
    x = torch.randn(N, n * C, generator=g).to(device=device, dtype=torch.bfloat16)
    phi = (torch.randn(n * C, M, generator=g) * 0.05).to(device)
    monkeypatch.setattr(launch, "PROJ_FWD_MERGED", False)
    m0, ss0 = launch.launch_proj_fwd(x, phi, M, "bf16x2")
    monkeypatch.setattr(launch, "PROJ_FWD_MERGED", True)
    m1, ss1 = launch.launch_proj_fwd(x, phi, M, "bf16x2")
    m_bf16, _ = launch.launch_proj_fwd(x, phi, M, "bf16")  # no lo part: merging does not apply
    ref = x.double() @ phi.double()

    def rel(a, b):
        return ((a.double() - b).norm() / b.norm()).item()

    assert rel(m1, m0.double()) < 1e-6 and torch.equal(ss1, ss0)
    assert rel(m1, ref) < 1e-5 < rel(m_bf16, ref)


@pytest.mark.parametrize("parts", [1, 2])
def test_coef_bwd_writes_dm_parts_for_the_dphi_gemm(fused, launch, device, parts):
    """coef_bwd's bf16 parts of dm (the CUDA dφ GEMM's operand; CPU runs never ask for them in the
    ops) are dm's hi (+ lo) split, and the GEMM from them equals the GEMM that splits dm itself."""
    g = torch.Generator().manual_seed(parts)
    N, n, C = 37, 4, 24
    M = n * n + 2 * n
    f32 = dict(device=device, dtype=torch.float32)
    m = torch.randn(N, M, generator=g).to(**f32)
    r = (1 + torch.rand(N, generator=g)).to(**f32)
    alpha, bias = (0.5 + torch.rand(3, generator=g)).to(**f32), torch.randn(M, generator=g).to(**f32)
    gp, gq, gr = (torch.randn(*s, generator=g).to(**f32) for s in ((N, n), (N, n), (N, n, n)))
    dbias, dm, c, dalpha, none = launch.launch_coef_bwd(m, r, alpha, bias, gp, gq, gr, n, n * C, 20, 1e-6)
    out = launch.launch_coef_bwd(m, r, alpha, bias, gp, gq, gr, n, n * C, 20, 1e-6, parts)
    assert none is None and all(torch.equal(a, b) for a, b in zip((dbias, dm, c, dalpha), out[:4]))
    dmp = out[4]
    assert dmp.dtype == torch.bfloat16 and tuple(dmp.shape) == (N, parts * M)
    hi = dmp[:, :M].float()
    # the CPU interpreter rounds fp32 -> bf16 toward zero, the GPU to nearest: within one bf16 step
    assert ((hi - dm).abs() <= dm.abs() * 2**-7).all()
    if parts == 2:
        assert ((hi + dmp[:, M:].float() - dm).abs() <= dm.abs() * 2**-14).all()
    x = torch.randn(N, n * C, generator=g).to(device=device, dtype=torch.bfloat16)
    prec = "bf16" if parts == 1 else "bf16x2"
    a, b = launch._dphi_gemm(x, dm, prec, dmp), launch._dphi_gemm(x, dm, prec)
    if device == "cuda":  # same rounding as torch's split: the same operand, the same GEMM
        ref = dm.to(torch.bfloat16)
        assert torch.equal(dmp[:, :M], ref) and torch.equal(a, b)
        if parts == 2:
            assert torch.equal(dmp[:, M:], (dm - ref.float()).to(torch.bfloat16))
    else:
        assert ((a - b).norm() / b.norm()).item() <= (2**-7 if parts == 1 else 1e-4)


@pytest.mark.parametrize("R, W, split", [(70, 27, 24), (1, 18, 15), (33, 3, 1)])
def test_sum_rows_splits_the_column_sums(fused, launch, device, R, W, split):
    """coef_bwd's partial sums (dbias | dα per program) are reduced by one kernel into two outputs."""
    part = torch.randn(R, W, generator=torch.Generator().manual_seed(R)).to(device)
    a, b = torch.empty(split, device=device), torch.empty(W - split, device=device)
    launch.ck.sum_rows[(1,)](part, a, b, R, W, split, BR=32, WP=launch._p2(W, 16))
    ref = part.double().sum(0)
    assert torch.allclose(a.double(), ref[:split], rtol=1e-6, atol=1e-5)
    assert torch.allclose(b.double(), ref[split:], rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("setting", ["ieee", "tf32"])
def test_mm_tf32_restores_the_matmul_precision(launch, setting):
    """_mm_tf32 (the fp32 stream's dφ GEMM on CUDA) leaves the caller's precision switch as it found
    it, also when the product raises."""
    mm = torch.backends.cuda.matmul  # a __getattr__ module: monkeypatch cannot patch it
    attr, val = ("fp32_precision", setting) if hasattr(mm, "fp32_precision") else ("allow_tf32", setting == "tf32")
    before = getattr(mm, attr)
    setattr(mm, attr, val)
    try:
        a, b = torch.randn(5, 7), torch.randn(7, 3)
        assert torch.equal(launch._mm_tf32(a, b), a @ b) and getattr(mm, attr) == val
        with pytest.raises(RuntimeError):
            launch._mm_tf32(a, a)
        assert getattr(mm, attr) == val
    finally:
        setattr(mm, attr, before)


def test_dphi_gemm_on_an_fp32_stream(launch, device):
    """dφ = xᵀ·dm on an fp32 stream: fp32 on the CPU; tf32 on CUDA (DOT_PRECISION), within tf32's
    rounding of the fp64 product and not bit-equal to the fp32 GEMM (so tensor cores ran)."""
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    N, K, M = 4099, 3 * 257, 24
    x, dm = torch.randn(N, K, generator=g), torch.randn(N, M, generator=g)
    ref = x.double().t() @ dm.double()
    got = launch._dphi_gemm(x.to(device), dm.to(device), "bf16x2").cpu()
    err = ((got.double() - ref).norm() / ref.norm()).item()
    if device == "cpu":
        assert err < 1e-6
    else:
        ieee = (x.to(device).t() @ dm.to(device)).cpu()
        assert err < 2e-3 and not torch.equal(got, ieee), f"relative error {err:.2e}"


@pytest.mark.parametrize("trans", [False, True])
@pytest.mark.parametrize("precision", ["bf16x2", "bf16"])
@pytest.mark.parametrize("N,n,C", [(37, 4, 40), (11, 8, 24)])
def test_pointer_proj_bwd_bf16_products(launch, device, monkeypatch, N, n, C, precision, trans):
    """The pointer projection backward on a bf16 stream with dφ reduced in the pass (_PROJ_BWD_GEMM None,
    and always at n = 8), dφ accumulated as vᵀ·dm or (TRANS) dmᵀ·v: dφ (fp32 output) against a float64
    xᵀ·dm within what dm's bf16 parts allow — "bf16x2" hi + lo ≈ fp32, "bf16" one rounding. The sub-layer
    tests compare bf16 gradients at 2e-2, far above a dropped lo product (≈ 2^-9)."""
    monkeypatch.setattr(launch, "_PROJ_BWD", (16, 32, 2, False, 4, trans))
    monkeypatch.setattr(launch, "_PROJ_BWD_GEMM", None)
    g = torch.Generator().manual_seed(N * n + trans)
    M, K = n * n + 2 * n, n * C
    x = torch.randn(N, K, generator=g).to(device=device, dtype=torch.bfloat16)
    phi = (0.1 * torch.randn(K, M, generator=g)).to(device)
    dm, c = torch.randn(N, M, generator=g).to(device), torch.randn(N, generator=g).to(device)
    dx, dphi = launch.launch_proj_bwd(x, phi, dm, c, precision)
    xd, dmd = x.double(), dm.double()
    # the interpreter rounds fp32 -> bf16 toward zero (2^-7 relative), the GPU to nearest (2^-8)
    tol = 2.0**-15 if precision == "bf16x2" else 2.0**-7
    assert ((dphi.double() - xd.t() @ dmd).abs() <= tol * (xd.abs().t() @ dmd.abs())).all()
    exact = dmd @ phi.double().t() + c.double()[:, None] * xd
    bound = 2.0**-7 * (exact.abs() + dmd.abs() @ phi.double().abs().t())  # bf16 output and operands
    assert ((dx.double() - exact).abs() <= bound).all()
