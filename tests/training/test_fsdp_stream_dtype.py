"""FSDP2 under bf16-mixed honours residual.stream_dtype as one device does (training/fsdp.shard_lm).

FSDP2's MixedPrecisionPolicy used to cast every block's input to bf16 and the embedding's output was
bf16, so the stream was bf16 whatever ``stream_dtype`` said (``auto`` and ``float32`` included) while
the run logged ``model.residual.stream_dtype=auto``. One process, gloo: the same sharding code path.
"""
import dataclasses

import pytest
import torch

from mhc_repro.model.transformer import LM
from mhc_repro.presets import get_preset, with_variant
from mhc_repro.training.fsdp import shard_lm

from .conftest import world_of_one


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with world_of_one(tmp_path_factory.mktemp("pg"), "gloo", "cpu") as m:
        yield m


def _micro(preset: str, variant: str, stream_dtype: str):
    cfg = with_variant(get_preset(preset), variant, stream_dtype=stream_dtype)
    return dataclasses.replace(cfg, vocab_size=64, n_blocks=2, dense_ffn_width=64)


def _plain_and_sharded(cfg, mesh) -> tuple[LM, LM]:
    """The same LM twice (same seed): as is, and under shard_lm with bf16-mixed."""
    torch.manual_seed(0)
    plain = LM(cfg)
    torch.manual_seed(0)
    sharded = LM(cfg)
    shard_lm(sharded, mesh, bf16=True)
    return plain, sharded


def _stream_dtypes(model: LM, idx: torch.Tensor):
    seen = []

    def record(m, a):  # the input stream's dtype and, for HC/mHC, the dtypes their parameters have in forward
        seen.append((a[0].dtype, tuple(sorted({str(p.dtype) for p in m.parameters()}))))

    hooks = [r.register_forward_pre_hook(record) for r in model.residual_layers()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(idx).float().logsumexp(-1).mean()
    loss.backward()
    for h in hooks:
        h.remove()
    return seen, float(loss)


@pytest.mark.parametrize("stream_dtype, want", [("auto", torch.float32), ("float32", torch.float32),
                                                ("bfloat16", torch.bfloat16)])
@pytest.mark.parametrize("preset, variant", [("tiny", "mhc"), ("tiny", "residual"), ("tiny-moe", "hc")])
def test_fsdp_bf16_keeps_the_configured_stream_dtype(mesh, preset, variant, stream_dtype, want):
    plain, sharded = _plain_and_sharded(_micro(preset, variant, stream_dtype), mesh)
    idx = torch.randint(0, 64, (2, 8))
    plain_dtypes, plain_loss = _stream_dtypes(plain, idx)
    sharded_dtypes, sharded_loss = _stream_dtypes(sharded, idx)
    assert {d for d, _ in plain_dtypes} == {want}
    assert {p for _, p in plain_dtypes} <= {(), ("torch.float32",)}
    assert sharded_dtypes == plain_dtypes  # every sub-layer's input stream and coefficient parameters
    assert sharded_loss == pytest.approx(plain_loss, rel=2e-2)  # bf16 weights under FSDP2: close, not equal


def test_fsdp_bf16_with_the_projection_handoff(mesh):
    """residual.proj_handoff: the attention sub-layer reads the FFN sub-layer's φ, so shard_lm makes both
    residual modules one fp32 unit (as separate units that φ would still be sharded there)."""
    cfg = _micro("tiny", "mhc", "auto")
    cfg.residual.proj_handoff = True
    plain, sharded = _plain_and_sharded(cfg, mesh)
    idx = torch.randint(0, 64, (2, 8))
    _, plain_loss = _stream_dtypes(plain, idx)
    _, sharded_loss = _stream_dtypes(sharded, idx)
    assert sharded_loss == pytest.approx(plain_loss, rel=2e-2)
    grads = [b.ffn_residual.phi.grad for b in sharded.blocks]
    assert all(g is not None and float(g.full_tensor().abs().sum()) > 0 for g in grads)
