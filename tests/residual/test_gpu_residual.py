"""HC / mHC modules on CUDA: the fused Triton backend against the reference backend (bf16 stream)."""

import copy

import pytest
import torch

from mhc_repro.residual import ResidualConfig, build_residual, capture_h_res, expand_streams
from mhc_repro.residual.sinkhorn import sinkhorn, sinkhorn_unrolled

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("kind,switches", [("mhc", {}), ("hc", {}), ("mhc", {"use_h_res": False}),
                                           ("mhc", {"use_h_pre": False, "use_h_post": False})])
def test_triton_backend_matches_reference(kind, switches):
    torch.manual_seed(0)
    c = 256
    ref = build_residual(ResidualConfig(kind=kind, backend="reference", **switches), 3, c, 1e-6).cuda()
    if kind == "hc":
        torch.nn.init.normal_(ref.w_dyn, std=0.5)
    tri = copy.deepcopy(ref)
    tri.cfg.backend = "triton"
    lin = torch.nn.Linear(c, c).cuda()
    x0 = expand_streams(torch.randn(2, 64, c, device="cuda"), 4)
    x0 = (x0 + 0.1 * torch.randn_like(x0)).to(torch.bfloat16)
    outs, grads = [], []
    for m in (ref, tri):
        x = x0.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16), capture_h_res(m):
            out = m(x, lin)
        assert out.dtype == torch.bfloat16 and m.last_h_res.dtype == torch.float32
        out.float().pow(2).mean().backward()
        outs.append((out.float(), m.last_h_res))
        grads.append([x.grad.float()] + [p.grad.clone() for p in m.parameters()])
        m.zero_grad()
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=2e-2, atol=2e-2)
    for g_tri, g_ref in zip(grads[1], grads[0]):
        scale = g_ref.abs().max().clamp_min(1e-6)
        assert ((g_tri - g_ref).abs().max() / scale) < 3e-2


def test_sinkhorn_backward_cuda_float64():
    torch.manual_seed(0)
    logits = torch.randn(16, 4, 4, dtype=torch.float64, device="cuda", requires_grad=True)
    w = torch.randn_like(logits)
    g1, = torch.autograd.grad((sinkhorn(logits) * w).sum(), logits)
    g2, = torch.autograd.grad((sinkhorn_unrolled(logits) * w).sum(), logits)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)
