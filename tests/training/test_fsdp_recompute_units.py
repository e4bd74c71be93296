"""FSDP2 with recompute units of several blocks (``residual.recompute_blocks``): ``shard_lm`` shards a
unit's blocks as one group, whose parameters its first block's forward gathers for the followers'
sub-layers it runs. One process, gloo (a world of one: the same hooks and sharded parameters)."""
import dataclasses
from pathlib import Path

import pytest
import torch

from mhc_repro.model.transformer import LM
from mhc_repro.presets import get_preset, with_variant
from mhc_repro.training.fsdp import shard_lm

from .conftest import world_of_one

TINY_CONFIG = Path(__file__).resolve().parents[2] / "experiments" / "tiny" / "base.yaml"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with world_of_one(tmp_path_factory.mktemp("pg"), "gloo", "cpu") as m:
        yield m


def _cfg(preset: str, recompute: str, blocks, n_blocks: int = 4):
    cfg = with_variant(get_preset(preset), "mhc", stream_dtype="float32")
    cfg = dataclasses.replace(cfg, vocab_size=64, n_blocks=n_blocks, dense_ffn_width=64)
    cfg.residual.recompute, cfg.residual.recompute_blocks = recompute, blocks
    return cfg


def _step(cfg, mesh=None, bf16=False, probe=None, device="cpu", compiled=False):
    """Loss and full gradients of one forward + backward (same seed); ``probe(model)`` runs between them.
    ``compiled``: each block compiled as the training module does (before sharding)."""
    torch.manual_seed(0)
    model = LM(cfg).to(device)
    if compiled:
        torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint = True  # as training.module
        for block in model.blocks:
            block.compile()
    if mesh is not None:
        shard_lm(model, mesh, bf16=bf16)
    idx = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        loss = model(idx).float().logsumexp(-1).mean()
    seen = probe(model) if probe else None
    loss.backward()
    grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).detach().clone()
             for n, p in model.named_parameters()}
    return float(loss.detach()), grads, seen


@pytest.mark.parametrize("recompute, blocks, units", [("stream", 2, [[0, 1], [2, 3]]),
                                                      ("stream-ops", 3, [[0, 1, 2], [3]])])
def test_units_under_fsdp_give_the_plain_gradients(mesh, recompute, blocks, units):
    cfg = _cfg("tiny", recompute, blocks)
    assert [list(u) for u in LM(cfg).recompute_units] == units
    loss0, g0, _ = _step(_cfg("tiny", "none", 1))
    loss, g, _ = _step(cfg, mesh)
    assert loss == loss0
    assert g.keys() == g0.keys()
    for name in g0:
        torch.testing.assert_close(g[name], g0[name], rtol=1e-5, atol=1e-6, msg=name)


def test_a_unit_is_resharded_after_its_forward(mesh):
    # the group completes in the forward (the follower runs as a module inside its first block), so its
    # parameters are sharded again before the backward, not left gathered until the root's forward ends
    def sharded(model):
        return [block._get_fsdp_state()._fsdp_param_group.is_sharded for block in model.blocks]

    assert _step(_cfg("tiny", "stream", 2), mesh, probe=sharded)[2] == [True] * 4


def test_bf16_stream_one_block_units_under_fsdp(mesh):
    # bf16-mixed: the fp32 residual units' hooks run inside the checkpoint; "stream" with one-block
    # units replays them as they ran (the presets' MoE FFNs included)
    loss0, g0, _ = _step(_cfg("tiny-moe", "none", 1), mesh, bf16=True)
    loss, g, _ = _step(_cfg("tiny-moe", "stream", 1), mesh, bf16=True)
    assert loss == loss0
    for name in g0:
        torch.testing.assert_close(g[name], g0[name], rtol=1e-5, atol=1e-6, msg=name)


BF16_REFUSED = [("stream-ops", 1), ("stream-post", 1), ("stream", 2), ("stream-ops", 2)]


@pytest.mark.parametrize("recompute, blocks", BF16_REFUSED)
def test_bf16_refusals_are_needed(mesh, monkeypatch, recompute, blocks):
    # what the refusal stops: without it these fail in backward (SAC's replay of the checkpoint). If a
    # torch release makes one pass, this test fails, and the refusal (fsdp.recompute_error) can go.
    from mhc_repro.training import fsdp

    monkeypatch.setattr(fsdp, "recompute_error", lambda *a: None)
    with pytest.raises((RuntimeError, ValueError)):
        _step(_cfg("tiny", recompute, blocks), mesh, bf16=True)


@pytest.mark.parametrize("recompute, blocks", BF16_REFUSED)
def test_bf16_refused_in_one_line(mesh, recompute, blocks):
    with pytest.raises(ValueError) as err:
        _step(_cfg("tiny", recompute, blocks), mesh, bf16=True)
    msg = str(err.value)
    assert f"recompute={recompute!r}" in msg and "train.strategy=fsdp" in msg and "\n" not in msg


def test_refused_before_the_run_writes_anything(tmp_path):
    from mhc_repro.training.compose import build_config
    from mhc_repro.training.run import check_run_dir

    sets = ["train.variant=mhc", "train.strategy=fsdp", "train.precision=bf16-mixed",
            "model.residual.recompute=stream-ops", f"train.out_dir={tmp_path / 'runs'}"]
    cfg = build_config([TINY_CONFIG], sets, env={})
    with pytest.raises(ValueError, match="recompute='stream-ops'"):
        check_run_dir(cfg)
    assert not (tmp_path / "runs").exists()
    ok = build_config([TINY_CONFIG], sets[:-2] + ["model.residual.recompute=stream", f"train.out_dir={tmp_path / 'ok'}"],
                      env={})
    check_run_dir(ok)  # stream, one block per unit: accepted
    fp32 = build_config([TINY_CONFIG], [s.replace("bf16-mixed", "32-true") for s in sets], env={})
    check_run_dir(fp32)  # every mode without bf16


# ---- on the GPU (NCCL world of one, fused kernels) ------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("bf16, recompute, blocks, compiled", [(True, "stream", 1, False), (True, "stream", 1, True),
                                                               (False, "stream-ops", 2, True)])
def test_fsdp_recompute_on_cuda(cuda_mesh, bf16, recompute, blocks, compiled):
    loss0, g0, _ = _step(_cfg("tiny", "none", 1), cuda_mesh, bf16=bf16, device="cuda")
    loss, g, _ = _step(_cfg("tiny", recompute, blocks), cuda_mesh, bf16=bf16, device="cuda", compiled=compiled)
    assert loss == pytest.approx(loss0, rel=1e-3 if compiled else 1e-6)
    for name in g0:
        torch.testing.assert_close(g[name], g0[name], rtol=2e-2, atol=2e-3, msg=name)


@pytest.mark.gpu
@pytest.mark.parametrize("recompute, blocks", BF16_REFUSED)
def test_bf16_refusals_are_needed_on_cuda(cuda_mesh, monkeypatch, recompute, blocks):
    # the device's torch may differ from CI's: the refused cases must fail there too
    from mhc_repro.training import fsdp

    monkeypatch.setattr(fsdp, "recompute_error", lambda *a: None)
    with pytest.raises((RuntimeError, ValueError)):
        _step(_cfg("tiny", recompute, blocks), cuda_mesh, bf16=True, device="cuda")
