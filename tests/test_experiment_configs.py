"""Every shipped experiments/**/*.yaml composes and resolves into the typed configs (one per preset x variant)."""
from pathlib import Path

import pytest

from mhc_repro.presets import list_presets
from mhc_repro.training.compose import build_config

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
YAMLS = sorted(EXPERIMENTS.rglob("*.yaml"))


@pytest.mark.parametrize("path", YAMLS, ids=[str(p.relative_to(EXPERIMENTS)) for p in YAMLS])
def test_yaml_parses(path):
    cfg = build_config([path], env={})
    assert cfg.train.preset == path.parent.name
    if path.stem != "base":
        assert cfg.train.variant == path.stem and cfg.model.residual.kind == path.stem
    assert cfg.to_dict()["model"]["residual"]["kind"] == cfg.train.variant


def test_every_preset_has_every_variant():
    for preset in list_presets():
        for variant in ("residual", "hc", "mhc"):
            assert (EXPERIMENTS / preset / f"{variant}.yaml").is_file(), f"{preset}/{variant}.yaml"


@pytest.mark.parametrize("preset,steps,batch,lr", [("3b", 30000, 320, 8.6e-4), ("9b", 50000, 512, 5.9e-4),
                                                   ("27b", 50000, 1280, 4.0e-4), ("3b-1t", 100000, 2560, 9.0e-4)])
def test_paper_presets_follow_table5(preset, steps, batch, lr):
    t = build_config([EXPERIMENTS / preset / "mhc.yaml"], env={})
    assert (t.train.max_steps, t.train.global_batch_size, t.train.lr) == (steps, batch, lr)
    assert (t.train.warmup_steps, t.train.eps, t.train.weight_decay, t.train.betas) == (2000, 1e-20, 0.1, [0.9, 0.95])
    assert (t.train.lr_milestones, t.train.lr_factors) == ([0.8, 0.9], [0.316, 0.1])
    assert t.data.seq_len == 4096 and t.model.residual.n == 4 and t.model.vocab_size == 129280
