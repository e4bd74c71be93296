"""The fused ops trace under torch.compile without graph breaks (fake impls + autograd registered)."""

from __future__ import annotations

import pytest
import torch

from mhc_repro.kernels import get_mhc_ops


def _sublayer(ops, x, phi, alpha, bias, f_w, shift=False):
    N, n, C = x.shape
    h_pre, h_post, h_res = ops.mhc_coefficients(x.reshape(N, n * C), phi, alpha, bias, n, shift=shift)
    b = ops.mhc_pre(x, h_pre)
    return ops.mhc_post_res(x, torch.tanh(b * f_w), h_post, h_res)


def _leaves(device, N=13, n=4, C=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    M = n * n + 2 * n
    t = [torch.randn(N, n, C, generator=g), 0.1 * torch.randn(n * C, M, generator=g),
         0.5 + torch.rand(3, generator=g), 0.1 * torch.randn(M, generator=g), torch.randn(C, generator=g)]
    return [v.to(device).requires_grad_() for v in t]


@pytest.mark.parametrize("shift", [False, True])
def test_fullgraph_compile_matches_eager(fused, device, shift):
    ops = fused.ops()
    backend = "aot_eager" if device == "cpu" else "inductor"
    fn = torch.compile(lambda *a: _sublayer(ops, *a, shift=shift), backend=backend, fullgraph=True)
    a, b = _leaves(device), _leaves(device)
    ya, yb = _sublayer(ops, *a, shift=shift), fn(*b)
    w = torch.randn_like(ya)
    ga = torch.autograd.grad((ya * w).sum(), a)
    gb = torch.autograd.grad((yb * w).sum(), b)
    assert torch.allclose(ya, yb, rtol=1e-5, atol=1e-5)
    for u, v in zip(ga, gb):
        assert torch.allclose(u, v, rtol=1e-4, atol=1e-5)


def test_dispatch_names_and_forced_backend(fused, device):
    assert get_mhc_ops("triton", device).name == "triton"
    assert get_mhc_ops("reference", device).name == "reference"
    assert get_mhc_ops("auto", device).name == ("triton" if device == "cuda" else "reference")
    with pytest.raises(ValueError, match="backend"):
        get_mhc_ops("cuda", device)


@pytest.mark.parametrize("op", ["pre", "post_res", "coefficients", "coefficients-shift"])
def test_opcheck(fused, device, op):
    x, phi, alpha, bias, _ = [v.detach() for v in _leaves(device, N=5, n=2, C=16)]
    N, n, C = x.shape
    h_pre, h_post, h_res = (v.detach() for v in fused.mhc_coefficients(x.reshape(N, -1), phi, alpha, bias, n))
    args = {
        "pre": (x, h_pre),
        "post_res": (x, torch.randn(N, C, device=device), h_post, h_res),
        "coefficients": (x.reshape(N, -1), phi, alpha, bias, n, 20, 1e-6, 1e-6, "bf16x2"),
        "coefficients-shift": (x.reshape(N, -1), phi, alpha, bias, n, 20, 1e-6, 1e-6, "bf16x2", True),
    }[op]
    args = tuple(a.requires_grad_() if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(getattr(torch.ops.mhc_repro, op.removesuffix("-shift")).default, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("mode", ["mma", "split"])
def test_lazy_residual_gradient_under_compile(fused, launch, device, monkeypatch, mode):
    """LAZY_RES_DX: post_res's backward leaves H_resᵀ g to the compiler; gradients unchanged."""
    monkeypatch.setattr(fused, "LAZY_RES_DX", True)
    monkeypatch.setattr(launch, "_PRB", (mode, 16, 32, 4, 3))
    monkeypatch.setattr(launch, "_PRB_FP32", None)  # an fp32 stream runs the _PRB tile too
    ops = fused.ops()
    backend = "aot_eager" if device == "cpu" else "inductor"
    torch._dynamo.reset()
    fn = torch.compile(lambda *a: _sublayer(ops, *a), backend=backend, fullgraph=True)
    a, b = _leaves(device, seed=3), _leaves(device, seed=3)
    ya, yb = _sublayer(ops, *a), fn(*b)
    w = torch.randn_like(ya)
    ga = torch.autograd.grad((ya * w).sum(), a)
    gb = torch.autograd.grad((yb * w).sum(), b)
    torch._dynamo.reset()
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5)
