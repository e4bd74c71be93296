"""FSDP2 with selective recompute (``residual.recompute``): what runs, and what is refused in one line
before a run writes anything (``training.config.fsdp_recompute_error``): units of several blocks, and
under bf16 precision every mode but "stream". One process, gloo (a world of one: the same hooks and
sharded parameters); the GPU cases use NCCL and the fused kernels."""
import dataclasses
from pathlib import Path

import pytest
import torch

from mhc_repro.model.transformer import LM
from mhc_repro.presets import get_preset, with_variant
from mhc_repro.training.fsdp import shard_lm

from .conftest import world_of_one

TINY_CONFIG = Path(__file__).resolve().parents[2] / "experiments" / "tiny" / "base.yaml"
# (recompute, recompute_blocks, bf16): refused; each fails without the refusal
REFUSED = [("stream-ops", 1, True), ("stream-post", 1, True), ("stream", 2, True), ("stream", 2, False),
           ("stream-ops", 3, False)]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with world_of_one(tmp_path_factory.mktemp("pg"), "gloo", "cpu") as m:
        yield m


def _cfg(preset: str, recompute: str, blocks, n_blocks: int = 4):
    cfg = with_variant(get_preset(preset), "mhc", stream_dtype="float32")
    cfg = dataclasses.replace(cfg, vocab_size=64, n_blocks=n_blocks, dense_ffn_width=64)
    cfg.residual.recompute, cfg.residual.recompute_blocks = recompute, blocks
    return cfg


def _step(cfg, mesh=None, bf16=False, device="cpu", compiled=False):
    """Loss and full gradients of one forward + backward (same seed). ``compiled``: each block compiled
    as the training module does (before sharding)."""
    torch.manual_seed(0)
    model = LM(cfg).to(device)
    if compiled:
        for block in model.blocks:
            block.compile()
    if mesh is not None:
        shard_lm(model, mesh, bf16=bf16)
    idx = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        loss = model(idx).float().logsumexp(-1).mean()
    loss.backward()
    grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).detach().clone()
             for n, p in model.named_parameters()}
    return float(loss.detach()), grads


@pytest.mark.parametrize("preset, bf16, recompute", [("tiny-moe", True, "stream"), ("tiny", False, "stream-ops"),
                                                     ("tiny-moe", False, "stream-post")])
def test_supported_recompute_under_fsdp_gives_the_plain_gradients(mesh, preset, bf16, recompute):
    loss0, g0 = _step(_cfg(preset, "none", 1), mesh, bf16=bf16)
    loss, g = _step(_cfg(preset, recompute, 1), mesh, bf16=bf16)
    assert loss == loss0
    for name in g0:
        torch.testing.assert_close(g[name], g0[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("recompute, blocks, bf16", REFUSED)
def test_refusals_are_needed(mesh, monkeypatch, recompute, blocks, bf16):
    # what the refusal stops: without it these fail (units: the followers' parameters stay sharded;
    # bf16: SAC's replay). If a torch release makes one pass, this fails and the refusal can go.
    from mhc_repro.training import config

    monkeypatch.setattr(config, "fsdp_recompute_error", lambda *a: None)
    with pytest.raises((RuntimeError, ValueError)) as err:
        _step(_cfg("tiny", recompute, blocks), mesh, bf16=bf16)
    assert "train.strategy=fsdp" not in str(err.value)  # the failure itself, not the refusal


@pytest.mark.parametrize("recompute, blocks, bf16", REFUSED)
def test_refused_in_one_line(mesh, recompute, blocks, bf16):
    with pytest.raises(ValueError) as err:
        _step(_cfg("tiny", recompute, blocks), mesh, bf16=bf16)
    msg = str(err.value)
    assert "train.strategy=fsdp" in msg and "\n" not in msg
    assert (f"recompute_blocks={blocks!r}" if blocks > 1 else f"recompute={recompute!r}") in msg


def test_refused_before_the_run_writes_anything(tmp_path):
    from mhc_repro.training.compose import build_config
    from mhc_repro.training.run import check_run_dir

    sets = ["train.variant=mhc", "train.strategy=fsdp", "train.precision=bf16-mixed",
            "model.residual.recompute=stream-ops", f"train.out_dir={tmp_path / 'runs'}"]
    cfg = build_config([TINY_CONFIG], sets, env={})  # the precision is resolved by the run
    with pytest.raises(ValueError, match="recompute='stream-ops'"):
        check_run_dir(cfg)
    assert not (tmp_path / "runs").exists()
    ok = build_config([TINY_CONFIG], sets[:-2] + ["model.residual.recompute=stream", f"train.out_dir={tmp_path / 'ok'}"],
                      env={})
    check_run_dir(ok)  # stream: accepted
    fp32 = build_config([TINY_CONFIG], [s.replace("bf16-mixed", "32-true") for s in sets], env={})
    check_run_dir(fp32)  # every mode without bf16
    with pytest.raises(ValueError, match="recompute_blocks=2"):  # units: already the config's validation
        build_config([TINY_CONFIG], sets[:-1] + ["model.residual.recompute_blocks=2"], env={})


# ---- on the GPU (NCCL world of one, fused kernels) ------------------------------------------------

@pytest.fixture
def fresh_dynamo(monkeypatch):
    # compiled blocks add cache entries to Block.forward's code object: reset them after the test, so
    # that later tests in the process do not hit the recompile limit (run 134)
    import torch._dynamo

    monkeypatch.setattr(torch._dynamo.config, "skip_fwd_side_effects_in_bwd_under_checkpoint", True)
    yield
    torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.parametrize("compiled", [False, True])
def test_bf16_stream_recompute_on_cuda(cuda_mesh, fresh_dynamo, compiled):
    loss0, g0 = _step(_cfg("tiny", "none", 1), cuda_mesh, bf16=True, device="cuda")
    loss, g = _step(_cfg("tiny", "stream", 1), cuda_mesh, bf16=True, device="cuda", compiled=compiled)
    assert loss == pytest.approx(loss0, rel=1e-3 if compiled else 1e-6)
    for name in g0:
        torch.testing.assert_close(g[name], g0[name], rtol=2e-2, atol=2e-3, msg=name)


# The refused cases fail on the H200 too (torch 2.11, NCCL, fused kernels: all five, run 136). That test
# is not kept: a failed FSDP2 backward in the process made the next FSDP2 test's recompute meet sharded
# parameters (test_fsdp_gpu's mhc case failed after it in run 136 and passed alone in run 137).
