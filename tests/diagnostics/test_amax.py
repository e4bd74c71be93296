import json

import pytest
import torch

from mhc_repro.diagnostics.amax import amax_gains, backward_gain, forward_gain, log_colsum, plot_amax
from mhc_repro.residual.sinkhorn import sinkhorn

KEYS = ("fwd_single", "bwd_single", "fwd_composite", "bwd_composite", "log_colsum_single")


def test_gains_by_hand():
    m = torch.tensor([[2.0, -1.0], [1.0, 3.0]])  # row sums 1, 4; column sums 3, 2
    assert forward_gain(m) == 4.0 and backward_gain(m) == 3.0
    assert torch.isclose(log_colsum(m), torch.log(torch.tensor(3.0)))
    signed = torch.tensor([[1.0, -1.0], [0.5, 0.0]])  # signed sums: rows 0, 0.5; columns 1.5, -1
    assert forward_gain(signed) == 0.5 and backward_gain(signed) == 1.5


def test_identity_baseline_all_ones():
    mats = [torch.eye(4).expand(2, 3, 4, 4) for _ in range(5)]
    r = amax_gains(mats)
    for key in KEYS[:4]:
        assert r[key] == [1.0] * 5 and r[f"{key}_max"] == 1.0
    assert r["log_colsum_single"] == [0.0] * 5
    json.dumps(r)  # plain python: goes straight into the MLflow artifact


def test_composite_order_prefix_and_suffix():
    a = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [3.0, 1.0]])
    r = amax_gains([a, b])
    ba, ab = b @ a, a @ b  # forward composite at l=2 is H_2 H_1; backward at l=1 is H_2 H_1 too
    assert r["fwd_composite"] == [forward_gain(a).item(), forward_gain(ba).item()]
    assert r["bwd_composite"] == [backward_gain(ba).item(), backward_gain(b).item()]
    assert forward_gain(ba) != forward_gain(ab)  # the order matters for this pair


def test_doubly_stochastic_composite_stays_bounded_while_hc_grows():
    torch.manual_seed(0)
    ds = [sinkhorn(torch.randn(8, 4, 4) * 2, 20, 1e-6) for _ in range(60)]
    r = amax_gains(ds)
    assert len(r["fwd_composite"]) == 60
    assert r["fwd_composite_max"] <= 1 + 1e-5 and r["bwd_composite_max"] <= 1 + 0.02  # columns: approx
    assert max(r["fwd_single"]) <= 1 + 1e-5
    # HC-style unconstrained mappings: identity + small positive-ish noise
    hc = [torch.eye(4) + 0.05 * torch.randn(8, 4, 4) + 0.03 for _ in range(60)]
    r_hc = amax_gains(hc)
    assert r_hc["fwd_composite"][-1] > 10 and r_hc["bwd_composite"][0] > 10
    assert r_hc["fwd_composite"][-1] > r_hc["fwd_composite"][9] > r_hc["fwd_composite"][0]


def test_token_reductions_differ_and_validate():
    # two tokens whose matrices cancel in the mean: matrix_mean sees ~0, gain_mean sees 2
    m = torch.stack([2 * torch.eye(2), -2 * torch.eye(2)])
    assert amax_gains([m], "matrix_mean")["fwd_single"] == [0.0]
    assert amax_gains([m], "gain_mean")["fwd_single"] == [2.0]
    with pytest.raises(ValueError, match="reduce='median'"):
        amax_gains([m], "median")
    with pytest.raises(ValueError, match="shape"):
        amax_gains([torch.eye(2), torch.eye(3)])
    with pytest.raises(ValueError, match="token count"):
        amax_gains([torch.eye(2).expand(3, 2, 2), torch.eye(2).expand(4, 2, 2)], "gain_mean")


def test_plot_amax_writes_png(tmp_path):
    r = amax_gains([torch.eye(4) + 0.1 * torch.rand(4, 4) for _ in range(6)])
    path = plot_amax(r, str(tmp_path / "amax.png"), "test")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
