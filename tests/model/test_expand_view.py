"""expand_streams hands the first block a broadcast view (so recompute keeps the embedding, not n
copies): the LM must compute the same loss and gradients as with a materialized copy."""

import pytest
import torch

import mhc_repro.model.transformer as transformer
from mhc_repro.model import LM
from mhc_repro.presets import get_preset, with_variant
from mhc_repro.residual.base import expand_streams


def _loss_and_grads(variant: str, materialize: bool, monkeypatch):
    expand = (lambda h, n: expand_streams(h, n).contiguous()) if materialize else expand_streams
    monkeypatch.setattr(transformer, "expand_streams", expand)
    torch.manual_seed(0)
    cfg = with_variant(get_preset("tiny"), variant)
    m = LM(cfg.validate())
    idx = torch.randint(0, cfg.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1))
    loss = m(idx).float().logsumexp(-1).mean()
    loss.backward()
    return loss.item(), {k: p.grad for k, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("variant", ["hc", "mhc"])
def test_view_matches_a_materialized_copy(variant, monkeypatch):
    assert expand_streams(torch.randn(2, 3, 8), 4).stride()[-2] == 0
    l_view, g_view = _loss_and_grads(variant, False, monkeypatch)
    l_copy, g_copy = _loss_and_grads(variant, True, monkeypatch)
    assert l_view == pytest.approx(l_copy, rel=1e-6)
    assert g_view.keys() == g_copy.keys()
    for k in g_copy:  # fp32 summation order only
        scale = g_copy[k].abs().max().clamp_min(1e-12)
        assert ((g_view[k] - g_copy[k]).abs().max() / scale).item() < 1e-3, k
