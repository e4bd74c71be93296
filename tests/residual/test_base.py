import pytest
import torch

from mhc_repro.residual import (ResidualConfig, StreamResidual, build_residual, capture_h_res, expand_streams,
                                no_weight_decay)
from mhc_repro.residual.hc import HyperConnection
from mhc_repro.residual.mhc import ManifoldHyperConnection
from mhc_repro.residual.prenorm import PreNormResidual


def test_build_residual_kinds_and_errors():
    assert isinstance(build_residual(ResidualConfig(kind="residual"), 0, 8, 1e-6), PreNormResidual)
    assert isinstance(build_residual(ResidualConfig(kind="hc"), 0, 8, 1e-6), HyperConnection)
    assert isinstance(build_residual(ResidualConfig(kind="mhc"), 0, 8, 1e-6), ManifoldHyperConnection)
    with pytest.raises(ValueError, match="layer_index=-1"):
        build_residual(ResidualConfig(), -1, 8, 1e-6)
    with pytest.raises(ValueError, match="residual.kind='bogus'"):
        build_residual(ResidualConfig(kind="bogus"), 0, 8, 1e-6)
    m = build_residual(ResidualConfig(kind="mhc"), 0, 8, 1e-6)
    with pytest.raises(ValueError, match=r"got shape \(2, 3, 2, 8\)"):
        m(torch.randn(2, 3, 2, 8), lambda h: h)


def test_mhc_parameter_shapes_and_dtypes():
    m = build_residual(ResidualConfig(kind="mhc", n=4), 0, 8, 1e-6)
    assert m.phi.shape == (32, 24) and m.phi.dtype == torch.float32
    assert m.alpha.tolist() == pytest.approx([0.01] * 3) and m.bias.shape == (24,)


def test_expand_streams():
    h = torch.randn(2, 3, 5)
    x = expand_streams(h, 4)
    assert x.shape == (2, 3, 4, 5) and all(torch.equal(x[..., i, :], h) for i in range(4))
    assert expand_streams(h, 1).shape == (2, 3, 1, 5)
    with pytest.raises(ValueError, match="n=0"):
        expand_streams(h, 0)


def test_no_weight_decay_names():
    assert no_weight_decay("blocks.0.attn_residual.static_res")
    assert no_weight_decay("blocks.3.ffn_residual.alpha") and no_weight_decay("x.bias")
    assert no_weight_decay("blocks.0.attn_residual.norm.weight")
    assert not no_weight_decay("blocks.0.attn_residual.phi") and not no_weight_decay("blocks.0.attn_residual.w_dyn")


def test_capture_h_res_scopes_and_restores():
    net = torch.nn.ModuleList(build_residual(ResidualConfig(kind="mhc"), l, 8, 1e-6) for l in range(3))
    x = torch.randn(1, 2, 4, 8)
    with capture_h_res(net) as layers:
        assert len(layers) == 3 and all(isinstance(m, StreamResidual) and m.capture for m in layers)
        for m in net:
            x = m(x, torch.tanh)
    assert all(not m.capture and m.last_h_res.shape == (1, 2, 4, 4) for m in net)
