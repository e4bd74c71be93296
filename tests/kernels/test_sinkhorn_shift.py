"""residual.sinkhorn_shift in the fused kernels (coef_fwd / coef_bwd with SHIFT) against the fp64
reference with shift=True (residual/sinkhorn.py): values and every gradient, also with H_res logits
outside fp32's exp range, where the literal exp gives NaN."""

from __future__ import annotations

import pytest
import torch

from .test_fused_parity import REF, _compare, _inputs, _run

# The linked pair with the shift: test_linked.test_linked_shift_out_of_range_logits.
# Odd token counts (a clipped last token block); n = 1 and 3 pad the Sinkhorn tile (NP = 2, 4).
SHAPES = [(37, 4, 40), (5, 1, 33), (19, 2, 48), (13, 3, 24)]


def _out_of_range(inp: dict, n: int) -> dict:
    """H_res logit (0, 0) near +100 (fp32 exp overflows) and, for n >= 2, column 1 near -110 (fp32 exp
    underflows to 0): H~_res = α·m/r + b, row-major after the 2n pre / post entries of the bias."""
    b = inp["bias"].clone()
    b[2 * n] += 100.0
    if n >= 2:
        b[2 * n + 1 :: n] -= 110.0  # entries (i, 1)
    return dict(inp, bias=b)


def _tol(device: str) -> float:
    return 2e-5 if device == "cpu" else 5e-3


@pytest.mark.filterwarnings("ignore:overflow encountered in exp", "ignore:invalid value encountered in divide")
@pytest.mark.parametrize("logits", ["ordinary", "out of range"])
@pytest.mark.parametrize("N,n,C", SHAPES)
def test_shift_matches_fp64_reference(fused, device, N, n, C, logits):
    inp = _inputs(N, n, C, torch.float32, device, seed=5 * N + n)
    if logits == "out of range":
        inp = _out_of_range(inp, n)
        x = inp["x"].reshape(N, n * C)
        literal = fused.mhc_coefficients(x, inp["phi"], inp["alpha"], inp["bias"], n)[2]
        assert torch.isnan(literal).any()  # why the option exists: inf / inf without the shift
    got = _run(fused.ops(), inp, n, t_max=20, upcast=False, shift=True)
    ref = _run(REF, inp, n, t_max=20, upcast=True, shift=True)
    _compare(got, ref, tol=_tol(device))


def test_shift_short_tmax_wide_logits(fused, device):
    """Few iterations, wide logits: the shift cancels only if it is per column (the first step's axis);
    a per-row or per-matrix max would give another matrix after 3 iterations."""
    inp = _inputs(21, 4, 32, torch.float32, device, seed=4)
    inp["alpha"] = inp["alpha"] * 8
    got = _run(fused.ops(), inp, 4, t_max=3, upcast=False, shift=True)
    ref = _run(REF, inp, 4, t_max=3, upcast=True, shift=True)
    _compare(got, ref, tol=_tol(device))

