"""train.compile: every compiled block variant must stay compiled. block.compile() shares one code
object between the blocks, and Dynamo keeps 8 variants of it by default; the tiny preset with
validation and the Amax capture needs 9 (first block with the expanded stream, the last with the
collapse, grad / no grad, capture on / off), past which the rest ran eager without a word."""
import pytest
import torch._dynamo.config as dynamo_config

from mhc_repro.training.compose import build_config
from mhc_repro.training.module import LMModule, raise_recompile_limit

from .conftest import micro_overrides


@pytest.fixture(autouse=True)
def restore_limit():
    # Dynamo's config module is not an ordinary module (monkeypatch.setattr trips over it)
    saved = dynamo_config.recompile_limit, dynamo_config.skip_fwd_side_effects_in_bwd_under_checkpoint
    yield
    dynamo_config.recompile_limit, dynamo_config.skip_fwd_side_effects_in_bwd_under_checkpoint = saved


def test_raise_recompile_limit_scales_with_blocks_and_never_lowers():
    dynamo_config.recompile_limit = 8
    assert raise_recompile_limit(12) == 48 == dynamo_config.recompile_limit
    assert raise_recompile_limit(1) == 48  # a limit someone set higher stays
    dynamo_config.recompile_limit = 8
    assert raise_recompile_limit(1) == 8  # 2 blocks' worth at least: 8


def test_configure_model_sets_the_limit_only_when_compiling(tmp_path):
    for compile_, want in ((False, 8), (True, 4 * 3)):
        dynamo_config.recompile_limit = 8
        dynamo_config.skip_fwd_side_effects_in_bwd_under_checkpoint = False
        over = micro_overrides(tmp_path, tmp_path, tmp_path, **{"train.compile": compile_, "model.n_blocks": 3})
        module = LMModule(build_config([], over, env={}).to_dict())
        module.configure_model()
        assert dynamo_config.recompile_limit == want, compile_
        # the MoE's kept load counts inside a traced recompute checkpoint (tests/residual/test_recompute.py)
        assert dynamo_config.skip_fwd_side_effects_in_bwd_under_checkpoint == compile_
