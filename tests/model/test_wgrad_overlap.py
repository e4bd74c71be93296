"""OverlapLinear (weight gradient on a side stream): same values and gradients as nn.Linear, eager and
compiled, accumulated over backwards; on CUDA under a high-priority step stream too."""

import copy

import pytest
import torch
import torch.nn as nn

from mhc_repro.model import wgrad_overlap
from mhc_repro.model.wgrad_overlap import OverlapLinear, use_overlap_linears


def _mlp(dtype, device="cpu", bias=False):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 40, bias=bias), nn.GELU(), nn.Linear(40, 24, bias=bias)).to(device, dtype)


def _grads(model, x, dout, backwards=1):
    for p in model.parameters():
        p.grad = None
    for _ in range(backwards):
        model(x).backward(dout)
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("backwards", [1, 2])
def test_matches_linear_fp64(bias, backwards):
    ref = _mlp(torch.float64, bias=bias)
    ovl = use_overlap_linears(copy.deepcopy(ref))
    assert all(type(m) is OverlapLinear for m in ovl if isinstance(m, nn.Linear))
    x = torch.randn(3, 7, 24, dtype=torch.float64)
    dout = torch.randn(3, 7, 24, dtype=torch.float64)
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.testing.assert_close(ovl(xo), ref(xr), rtol=1e-12, atol=1e-12)  # bias: addmm vs add
    for a, b in zip(_grads(ovl, xo, dout, backwards), _grads(ref, xr, dout, backwards)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_compiles_without_graph_breaks():
    ref = _mlp(torch.float32)
    ovl = torch.compile(use_overlap_linears(copy.deepcopy(ref)), backend="aot_eager", fullgraph=True)
    x, dout = torch.randn(5, 24), torch.randn(5, 24)
    for a, b in zip(_grads(ovl, x, dout), _grads(ref, x, dout)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_wgrad_side_opcheck():
    dy, x, w = torch.randn(6, 5), torch.randn(6, 3), torch.randn(5, 3)
    torch.library.opcheck(wgrad_overlap.wgrad_side, (dy, x, w))
    torch.testing.assert_close(wgrad_overlap.wgrad_side(dy, x, w), dy.t() @ x)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("high", [False, True])
@pytest.mark.parametrize("backwards", [1, 2])
def test_cuda_compiled_matches_linear(high, backwards):
    torch._dynamo.reset()
    ref = _mlp(torch.bfloat16, "cuda")
    ovl = torch.compile(use_overlap_linears(copy.deepcopy(ref)), fullgraph=True)
    refc = torch.compile(ref, fullgraph=True)
    x = torch.randn(8, 512, 24, device="cuda", dtype=torch.bfloat16)
    dout = torch.randn_like(x)
    for _ in range(3):  # several steps: the allocator reuses memory the side stream used
        if high:
            with wgrad_overlap.on_stream(wgrad_overlap.high_priority_stream("cuda")):
                got = _grads(ovl, x, dout, backwards)
        else:
            got = _grads(ovl, x, dout, backwards)
        want = _grads(refc, x, dout, backwards)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
    assert not wgrad_overlap._MAINS  # every side launch joined by the end of backward
