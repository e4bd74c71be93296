"""FSDP2 on one CUDA device (NCCL, world size 1) under bf16 autocast: the fused mHC/HC kernels see the
configured stream dtype and fp32 coefficient parameters, as without sharding (training/fsdp.shard_lm)."""
import dataclasses

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("variant", ["mhc", "hc"])
@pytest.mark.parametrize("stream_dtype", ["auto", "bfloat16"])
def test_fsdp_bf16_on_cuda_matches_one_device(cuda_mesh, variant, stream_dtype):
    from mhc_repro.model.transformer import LM
    from mhc_repro.presets import get_preset, with_variant
    from mhc_repro.training.fsdp import shard_lm

    cfg = dataclasses.replace(with_variant(get_preset("tiny"), variant, stream_dtype=stream_dtype),
                              vocab_size=256, n_blocks=2)
    seen = {"plain": [], "sharded": []}
    losses = {}
    idx = torch.randint(0, 256, (2, 64), device="cuda")
    for name in ("plain", "sharded"):
        torch.manual_seed(0)
        model = LM(cfg).cuda()
        if name == "sharded":
            shard_lm(model, cuda_mesh, bf16=True)
        hooks = [r.register_forward_pre_hook(
            lambda m, a, name=name: seen[name].append((a[0].dtype, sorted({str(p.dtype) for p in m.parameters()}))))
            for r in model.residual_layers()]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(idx).float().logsumexp(-1).mean()
        loss.backward()
        assert all(torch.isfinite(p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).all()
                   for p in model.parameters() if p.grad is not None)
        for h in hooks:
            h.remove()
        losses[name] = float(loss)
    assert seen["sharded"] == seen["plain"]
    assert {p for _, ps in seen["plain"] for p in ps} == {"torch.float32"}
    assert losses["sharded"] == pytest.approx(losses["plain"], rel=2e-2)
