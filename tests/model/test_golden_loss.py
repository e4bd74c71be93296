"""Golden loss curves: a tiny LM of each residual variant trained for a few steps on CPU must give the
committed curve (tests/model/golden/loss_curves.json). Guards the numerics of the model, the residual
variants and the optimizer groups against silent changes; the fused kernels (Triton interpreter) must
reproduce the mHC curve too. After an intended change of the numerics, regenerate with
``MHC_UPDATE_GOLDEN=1 pytest tests/model/test_golden_loss.py`` and say why in the commit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mhc_repro.data.synthetic import bigram_batches
from mhc_repro.model.transformer import LM
from mhc_repro.presets import get_preset, with_variant

GOLDEN = Path(__file__).parent / "golden" / "loss_curves.json"
STEPS, VOCAB, SEQ, BATCH = 25, 64, 16, 2  # batch 2 (was 4, up to session 31): half the tokens of the interpreted fused curve
UPDATE = os.environ.get("MHC_UPDATE_GOLDEN") == "1"


def _curve(variant: str, steps: int = STEPS, **residual) -> list[float]:
    cfg = with_variant(get_preset("tiny"), variant, **residual)
    cfg.vocab_size, cfg.d_model, cfg.n_blocks, cfg.dense_ffn_width, cfg.max_seq_len = VOCAB, 32, 2, 64, SEQ
    cfg.attention.n_heads, cfg.attention.head_dim = 2, 16
    torch.manual_seed(0)
    model = LM(cfg.validate())
    opt = torch.optim.AdamW(model.param_groups(0.1), lr=3e-3, betas=(0.9, 0.95))
    losses = []
    for tok in bigram_batches(VOCAB, BATCH, SEQ, steps, seed=1):
        loss = F.cross_entropy(model(tok[:, :-1]).flatten(0, 1), tok[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(round(loss.item(), 6))
    return losses


@pytest.fixture(scope="module")
def golden() -> dict:
    if UPDATE:
        data = {v: _curve(v, backend="reference") if v != "residual" else _curve(v)
                for v in ("residual", "hc", "mhc")}
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(data, indent=1) + "\n")
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("variant", ["residual", "hc", "mhc"])
def test_reference_curve_matches_golden(golden, variant):
    got = _curve(variant) if variant == "residual" else _curve(variant, backend="reference")
    want = golden[variant]
    assert len(got) == len(want) == STEPS
    assert want[-1] < 0.9 * want[0], "the golden curve must show learning"
    for step, (a, b) in enumerate(zip(got, want)):
        assert abs(a - b) <= 1e-4 * max(1.0, abs(b)), f"{variant} step {step}: loss {a} != golden {b}"


def test_variants_differ(golden):
    """The three curves are different functions (a mix-up of variants would show here)."""
    assert golden["residual"] != golden["hc"] != golden["mhc"] != golden["residual"]


def test_fused_kernels_reproduce_mhc_curve(golden, triton_cpu):
    # 3 steps (the third loss follows two AdamW updates, the second of which weighs the first two steps'
    # gradients against each other): the interpreter is slow (~7 s a step at batch 2 on the 2-core dev machine);
    # linked vs three is checked in tests/residual.
    got = _curve("mhc", steps=3, backend="triton")
    assert len(got) == 3
    for step, (a, b) in enumerate(zip(got, golden["mhc"][:3])):
        assert abs(a - b) <= 1e-4, f"triton step {step}: loss {a} != golden {b}"
