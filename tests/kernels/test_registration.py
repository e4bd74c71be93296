"""How the ops are registered (kernels.registration): triton_op or custom_op, chosen at import.

The default ("custom_op") is what every other kernel test covers. The triton_op bodies are checked
here in eager mode on CPU (interpreted kernels), in a subprocess that forces them; on CUDA, with
MHC_KERNEL_OPS=triton_op, the compiled sub-layer must launch their kernels from Inductor's own code.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The linked pair with the fused norm plus the three plain ops, fused against the reference: values and
# every gradient, fp32 stream (exact products on CPU), odd token count and C.
_EAGER_PARITY = textwrap.dedent("""
    import torch
    from mhc_repro.kernels import get_mhc_ops, registration
    from mhc_repro.residual import mhc_ops as ref
    assert registration.OP_REGISTRATION == "triton_op", registration.OP_REGISTRATION
    fused = get_mhc_ops("triton", "cpu")
    assert "mhc_repro::pre_norm" in registration._TRACED and "mhc_repro::pre_linked_bwd" not in registration._TRACED
    g = torch.Generator().manual_seed(3)
    N, n, C = 11, 4, 24
    leaves = [torch.randn(N, n, C, generator=g), 0.1 * torch.randn(n * C, n * n + 2 * n, generator=g),
              0.5 + torch.rand(3, generator=g), 0.1 * torch.randn(n * n + 2 * n, generator=g),
              1 + 0.1 * torch.randn(C, generator=g), torch.randn(C, generator=g)]

    def sub(ops, x, phi, alpha, bias, nw, fw):
        b, hq, hr, xl = ops.mhc_pre_linked(x, phi, alpha, bias, n, norm_weight=nw)
        y = ops.mhc_post_res_linked(xl, torch.tanh(b * fw), hq, hr)
        hp, hq2, hr2 = ops.mhc_coefficients(y.reshape(N, n * C), phi, alpha, bias, n)
        return ops.mhc_post_res(y, torch.tanh(ops.mhc_pre(y, hp) * fw), hq2, hr2)

    outs = []
    for ops in (fused, ref):
        ls = [t.clone().requires_grad_() for t in leaves]
        y = sub(ops, *ls)
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(5))
        outs.append((y, *torch.autograd.grad((y * w).sum(), ls)))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)  # fp32 sums in other orders
    print("ok")
""")


def _run(code: str, **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT, **env}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU path (interpreted kernels)")
def test_triton_op_bodies_match_reference_in_eager():
    pytest.importorskip("triton")
    r = _run(_EAGER_PARITY, TRITON_INTERPRET="1", MHC_KERNEL_OPS="triton_op")
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


def test_bad_registration_is_one_clear_error():
    pytest.importorskip("triton")
    r = _run("import mhc_repro.kernels.fused", MHC_KERNEL_OPS="opaque", TRITON_INTERPRET="1")
    assert r.returncode != 0
    assert "MHC_KERNEL_OPS='opaque' is unknown; allowed: auto, triton_op, custom_op" in r.stderr.strip().splitlines()[-1]


def test_forced_triton_without_cuda_or_interpreter_is_one_clear_error():
    """backend "triton" forced for CPU tensors with compiled kernels (no TRITON_INTERPRET): a one-line
    error when the ops are picked, not Triton's "0 active drivers" at the first launch."""
    pytest.importorskip("triton")
    r = _run("from mhc_repro.kernels import get_mhc_ops; get_mhc_ops('triton', 'cpu')", TRITON_INTERPRET="0")
    assert r.returncode != 0
    assert ("ValueError: mHC backend 'triton' cannot run on device 'cpu': the fused kernels need CUDA, or "
            "TRITON_INTERPRET=1" in r.stderr.strip().splitlines()[-1]), r.stderr[-2000:]


def test_default_registration(fused):
    """"auto" (the default): triton_op with CUDA and compiled kernels, custom_op under the interpreter."""
    from mhc_repro.kernels import launch, launch_settings, registration

    auto = "triton_op" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") == "0" else "custom_op"
    requested = os.environ.get("MHC_KERNEL_OPS") or "auto"
    assert registration.OP_REGISTRATION == (auto if requested == "auto" else requested)
    assert launch_settings()["fused.OP_REGISTRATION"] == registration.OP_REGISTRATION
    assert launch_settings()["fused.OP_REGISTRATION_REQUESTED"] == registration.REQUESTED == requested
    assert launch.WRAP_LAUNCHES is (registration.OP_REGISTRATION == "triton_op")


def test_auto_is_custom_op_when_interpreted():
    pytest.importorskip("triton")
    r = _run("from mhc_repro.kernels import registration as r; print(r.REQUESTED, r.OP_REGISTRATION)",
             MHC_KERNEL_OPS="", TRITON_INTERPRET="1")
    assert r.stdout.split() == ["auto", "custom_op"], r.stderr[-2000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_sublayer_launches_kernels_inline(fused):
    """Under triton_op Inductor's generated code launches the kernels itself: the traceable ops do not
    appear as calls, the projection's backward (a custom op) does; values and gradients as eager."""
    from torch._inductor.utils import run_and_get_code

    from mhc_repro.kernels import registration

    if registration.OP_REGISTRATION != "triton_op":
        pytest.skip("custom ops registered (the default); run with MHC_KERNEL_OPS=triton_op")
    ops = fused.ops()
    N, n, C = 257, 4, 128

    def sub(x, phi, alpha, bias, nw, fw):
        b, hq, hr, xl = ops.mhc_pre_linked(x, phi, alpha, bias, n, norm_weight=nw)
        return ops.mhc_post_res_linked(xl, torch.tanh(b * fw), hq, hr)

    g = torch.Generator().manual_seed(0)
    leaves = [torch.randn(N, n, C, generator=g).bfloat16(), 0.1 * torch.randn(n * C, n * n + 2 * n, generator=g),
              0.5 + torch.rand(3, generator=g), 0.1 * torch.randn(n * n + 2 * n, generator=g),
              1 + 0.1 * torch.randn(C, generator=g), torch.randn(C, generator=g).bfloat16()]
    la = [t.cuda().requires_grad_() for t in leaves]
    lb = [t.cuda().requires_grad_() for t in leaves]
    torch._dynamo.reset()
    fn = torch.compile(sub, backend="inductor", fullgraph=True)

    def step(f, ls):
        y = f(*ls)
        return (y, *torch.autograd.grad((y.float() * torch.linspace(-1, 1, y.numel(), device="cuda")
                                         .view_as(y)).sum(), ls))

    got, codes = run_and_get_code(step, fn, lb)
    code = "\n".join(codes)
    for name in ("coefficients", "pre_norm", "post_res_linked", "post_res_bwd", "pre_norm_bwd"):
        assert f"mhc_repro.{name}." not in code, name
    assert "proj_fwd" in code and "pre_norm_fwd" in code and "post_res_fwd" in code
    assert "mhc_repro.pre_linked_bwd_add_" in code or "mhc_repro.pre_linked_bwd." in code
    # Inductor keeps bf16 pointwise math in fp32 where eager rounds each op, so compiled and eager differ
    # by a few bf16 ulps: both are measured against the same kernels on an fp32 stream, and the
    # compiled error may not exceed twice eager's (a race or a wrong buffer gives O(1) errors).
    eager = step(sub, la)
    ref = step(sub, [t.cuda().float().requires_grad_() for t in leaves])
    errs = [((a.float() - r).abs().max().item(), (b.float() - r).abs().max().item(), r.abs().max().item())
            for a, b, r in zip(got, eager, ref)]
    report = ", ".join(f"#{i}: compiled {c:.3g} eager {e:.3g} |ref| {m:.3g}" for i, (c, e, m) in enumerate(errs))
    assert all(c <= 2 * e + 1e-3 * m for c, e, m in errs), report
    torch._dynamo.reset()


def test_direct_launches_hand_back_the_kernel_itself(launch, monkeypatch):
    """Launchers called outside the ops (benchmarks) under launch.direct_launches() get the kernel, not
    wrap_triton's wrapper, whose eager launches keep their non-tensor arguments (TMA descriptors and
    the tensors they hold) in torch's kernel side table for good (run 107)."""
    import triton
    from triton.runtime.jit import JITFunction

    def kernel(x_ptr, n, B: triton.language.constexpr):
        pass

    jit = JITFunction(kernel)  # a compiled-path kernel even where TRITON_INTERPRET is set
    monkeypatch.setattr(launch, "WRAP_LAUNCHES", True)
    assert launch._k(jit) is not jit  # outside the ops and outside direct_launches: wrapped
    with launch.direct_launches():
        assert launch._k(jit) is jit
    assert launch._k(jit) is not jit
