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


# ---- shift=True (ResidualConfig.sinkhorn_shift): exp(z - column max), the max held constant --------
def _column_at(level: float, col: int, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    """Ordinary logits with every entry of one column near ``level``."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(16, 4, 4, generator=g, dtype=dtype)
    z[:, :, col] = level + torch.randn(16, 4, generator=g, dtype=dtype)
    return z


def _doubly_stochastic(h: torch.Tensor) -> bool:
    return bool(torch.isfinite(h).all() and (h.sum(-1) - 1).abs().max() < 1e-5
                and (h.sum(-2) - 1).abs().max() < 1e-3)


def test_shift_survives_fp32_overflow():
    z = _column_at(100.0, 1)  # exp(100) = inf in fp32
    assert torch.isnan(sinkhorn(z, 20, 1e-6)).any()  # the literal exp: inf / inf (why the option exists)
    assert _doubly_stochastic(sinkhorn(z, 20, 1e-6, shift=True))


def test_shift_survives_an_underflowing_column():
    # exp(-110) = 0 in fp32 (on a GPU with flush-to-zero already below ~-87): the literal exp leaves the
    # whole column at 0 forever; shifted, the column's largest entry is exp(0) = 1.
    z = _column_at(-110.0, 2)
    lit = sinkhorn(z, 20, 1e-6)
    assert (lit.sum(-2)[:, 2] < 1e-6).all() and not _doubly_stochastic(lit)
    assert _doubly_stochastic(sinkhorn(z, 20, 1e-6, shift=True))


def test_shift_keeps_eps_out_of_the_column_step():
    """A column near -30 sums to ~1e-12 < eps: with the literal exp the first column step divides by
    ~eps, not by the column sum, and the iterations start far from where they should. Shifted, the
    result is the eps-free Sinkhorn up to ~eps. (At t_max = 20 the literal exp has caught up again for
    these logits, to ~1e-6: the deficit shows at small t_max, or in fp32 below the underflow above.)"""
    z = _column_at(-30.0, 2, torch.float64)
    for t_max in (1, 3):
        ideal = sinkhorn(z, t_max, 0.0, shift=True)
        assert (sinkhorn(z, t_max, 1e-6) - ideal).abs().max() > 1e-2
        assert (sinkhorn(z, t_max, 1e-6, shift=True) - ideal).abs().max() < 1e-5


def test_shift_matches_literal_for_ordinary_logits():
    torch.manual_seed(2)
    z = (torch.randn(64, 4, 4, dtype=torch.float64) * 2).requires_grad_()
    w = torch.randn(64, 4, 4, dtype=torch.float64)
    lit, sh = sinkhorn(z, 20, 1e-6), sinkhorn(z, 20, 1e-6, shift=True)
    assert ((sh - lit).abs() / lit).max() < 1e-6 and (sh - lit).abs().max() > 0  # eps moved, not dropped
    g_lit, = torch.autograd.grad((lit * w).sum(), z)
    g_sh, = torch.autograd.grad((sh * w).sum(), z)
    assert (g_sh - g_lit).norm() / g_lit.norm() < 1e-6  # stop-gradient on the max: O(eps) off


def test_shift_custom_backward_matches_unrolled_autograd():
    torch.manual_seed(3)
    for t_max in (1, 5, 20):
        logits = torch.randn(5, 4, 4, dtype=torch.float64) * 3
        logits[0, :, 1] += 100.0  # far above fp32's exp range: the shift must be taken in the backward too
        logits[1, :, 3] -= 60.0
        logits.requires_grad_()
        w = torch.randn(5, 4, 4, dtype=torch.float64)
        g_custom, = torch.autograd.grad((sinkhorn(logits, t_max, 1e-6, shift=True) * w).sum(), logits)
        g_ref, = torch.autograd.grad((sinkhorn_unrolled(logits, t_max, 1e-6, shift=True) * w).sum(), logits)
        torch.testing.assert_close(g_custom, g_ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(sinkhorn(logits, t_max, 1e-6, shift=True),
                                   sinkhorn_unrolled(logits, t_max, 1e-6, shift=True))
