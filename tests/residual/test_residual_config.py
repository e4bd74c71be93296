import math

import pytest

from mhc_repro.residual.config import ResidualConfig


def test_defaults_validate_and_roundtrip():
    cfg = ResidualConfig().validate()
    assert (cfg.kind, cfg.n, cfg.sinkhorn_iters, cfg.sinkhorn_eps, cfg.alpha_init) == ("mhc", 4, 20, 1e-6, 0.01)
    again = ResidualConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.to_dict() == cfg.to_dict()


def test_residual_forces_one_stream():
    cfg = ResidualConfig(kind="residual", n=4)
    assert cfg.n == 1 and cfg.num_streams == 1
    cfg.validate()


@pytest.mark.parametrize("field,value,needle", [
    ("kind", "resnet", "residual.kind='resnet'"),
    ("n", 0, "residual.n=0"),
    ("collapse", "max", "residual.collapse='max'"),
    ("backend", "cuda", "residual.backend='cuda'"),
    ("recompute", "blocks", "residual.recompute='blocks'"),
    ("phi_init", "xavier", "residual.phi_init"),
    ("bias_init", "ones", "residual.bias_init"),
    ("sinkhorn_iters", 0, "residual.sinkhorn_iters=0"),
    ("sinkhorn_eps", -1.0, "residual.sinkhorn_eps"),
    ("alpha_init", math.nan, "residual.alpha_init"),
    ("fuse_branch_norm", "yes", "residual.fuse_branch_norm='yes'"),
    ("sinkhorn_shift", 1, "residual.sinkhorn_shift=1"),
    ("proj_handoff", "on", "residual.proj_handoff='on'"),
])
def test_bad_values_raise_one_line(field, value, needle):
    cfg = ResidualConfig()
    setattr(cfg, field, value)
    with pytest.raises(ValueError) as err:
        cfg.validate()
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


def test_unknown_key_in_from_dict():
    with pytest.raises(ValueError, match="expansion"):
        ResidualConfig.from_dict({"expansion": 4})


def test_ablation_name_and_output_scale():
    assert ResidualConfig().ablation_name == "full"
    assert ResidualConfig(use_h_pre=False, use_h_post=False).ablation_name == "res"
    assert ResidualConfig(use_h_post=False).ablation_name == "res+pre"
    assert ResidualConfig(use_h_res=False, use_h_pre=False, use_h_post=False).ablation_name == "none"
    assert ResidualConfig(kind="hc", n=4).output_init_scale == 2.0
    assert ResidualConfig(kind="mhc", n=4).output_init_scale == 1.0
    assert ResidualConfig(kind="residual").output_init_scale == 1.0
