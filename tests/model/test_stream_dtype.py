"""residual.stream_dtype: the stream between sub-layers keeps the chosen dtype for every kind."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from mhc_repro.model import LM
from mhc_repro.presets import get_preset, with_variant
from mhc_repro.residual.config import ResidualConfig


@pytest.mark.parametrize("variant", ["residual", "hc", "mhc"])
@pytest.mark.parametrize("stream_dtype, want", [("bfloat16", torch.bfloat16), ("auto", torch.float32),
                                                 ("float32", torch.float32)])
def test_stream_keeps_its_dtype(variant, stream_dtype, want):
    cfg = with_variant(get_preset("tiny"), variant)
    cfg = dataclasses.replace(cfg, residual=dataclasses.replace(cfg.residual, stream_dtype=stream_dtype))
    torch.manual_seed(0)
    m = LM(cfg)
    seen = []
    for b in m.blocks[:-1]:  # the last block collapses the streams
        b.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    idx = torch.randint(0, cfg.vocab_size, (2, 17))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16-mixed, as in training on a GPU
        logits = m(idx[:, :-1])
    assert seen and all(d == want for d in seen), seen
    loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_stream_dtype_rejects_unknown():
    with pytest.raises(ValueError, match=r"residual.stream_dtype='fp16' is unknown; allowed: auto, bfloat16, float32"):
        ResidualConfig(stream_dtype="fp16").validate()


def test_bf16_stream_without_autocast_stays_fp32():
    """An fp32 model run without autocast (CPU evaluation of a bf16-stream checkpoint) still runs."""
    cfg = get_preset("tiny")
    cfg = dataclasses.replace(cfg, residual=dataclasses.replace(cfg.residual, stream_dtype="bfloat16"))
    assert LM(cfg)(torch.zeros(1, 4, dtype=torch.long)).isfinite().all()
