"""Sinkhorn's recomputing custom backward vs autograd through the unrolled loop (float64)."""

import torch

from mhc_repro.residual.sinkhorn import sinkhorn, sinkhorn_unrolled


def test_rows_exact_columns_close():
    torch.manual_seed(0)
    h = sinkhorn(torch.randn(64, 4, 4) * 2.0, 20, 1e-6)
    assert (h.sum(-1) - 1).abs().max() < 1e-5  # fp32: rows exact up to eps and rounding
    assert (h.sum(-2) - 1).abs().max() < 5e-2
    assert (h > 0).all()


def test_gradcheck_custom_op():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: sinkhorn(z, 20, 1e-6), (logits,), eps=1e-6, atol=1e-7)


def test_matches_unrolled_autograd():
    torch.manual_seed(1)
    for t_max in (1, 5, 20):
        logits = (torch.randn(5, 4, 4, dtype=torch.float64) * 3).requires_grad_()
        w = torch.randn(5, 4, 4, dtype=torch.float64)
        g_custom, = torch.autograd.grad((sinkhorn(logits, t_max, 1e-6) * w).sum(), logits)
        g_ref, = torch.autograd.grad((sinkhorn_unrolled(logits, t_max, 1e-6) * w).sum(), logits)
        torch.testing.assert_close(g_custom, g_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(sinkhorn(logits, t_max, 1e-6), sinkhorn_unrolled(logits, t_max, 1e-6))
