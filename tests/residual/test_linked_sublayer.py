"""ResidualConfig.sublayer_ops="linked": the LM gives the same loss and gradients as "three"."""

from __future__ import annotations

import functools

import pytest
import torch

from mhc_repro.model.transformer import LM
from mhc_repro.presets import get_preset, with_variant


def _grads(backend: str, sublayer_ops: str, recompute: str = "none", **res) -> tuple[float, dict]:
    cfg = with_variant(get_preset("tiny"), "mhc", backend=backend, sublayer_ops=sublayer_ops,
                       recompute=recompute, **res)
    cfg.vocab_size, cfg.d_model, cfg.n_blocks, cfg.dense_ffn_width = 64, 32, 2, 64
    cfg.attention.n_heads, cfg.attention.head_dim = 2, 16
    torch.manual_seed(0)
    m = LM(cfg.validate())
    idx = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    loss = torch.nn.functional.cross_entropy(m(idx).flatten(0, 1), idx.flatten())
    loss.backward()
    return loss.item(), {k: p.grad.clone() for k, p in m.named_parameters()}


@functools.cache
def _grads_once(backend: str, sublayer_ops: str, recompute: str = "none", fuse_branch_norm: bool = True):
    """_grads, computed once per process for the comparisons below: under the interpreter each Triton
    run takes seconds, and the same run is a side of several of them (the tests only read the results;
    fuse_branch_norm's default, True, is spelled out so that both spellings share one entry)."""
    return _grads(backend, sublayer_ops, recompute, fuse_branch_norm=fuse_branch_norm)


@pytest.mark.parametrize("backend,recompute",
                         [("reference", "none"), ("triton", "none"), ("triton", "stream"), ("triton", "stream-ops")])
def test_linked_equals_three_ops(backend, recompute, request):
    if backend == "triton":
        request.getfixturevalue("triton_cpu")
    la, ga = _grads_once(backend, "three")
    lb, gb = _grads_once(backend, "linked", recompute)
    assert abs(la - lb) < 1e-6
    for k in ga:
        torch.testing.assert_close(gb[k], ga[k], rtol=1e-5, atol=1e-6, msg=k)


def test_linked_falls_back_for_ablations():
    # H_pre off: the linked pair would compute the learned H_pre; the module must use the three ops.
    la, ga = _grads("reference", "three", use_h_pre=False)
    lb, gb = _grads("reference", "linked", use_h_pre=False)
    assert la == lb


def test_bad_sublayer_ops():
    from mhc_repro.residual.config import ResidualConfig

    with pytest.raises(ValueError, match="residual.sublayer_ops='two' is unknown; allowed: three, linked"):
        ResidualConfig(kind="mhc", sublayer_ops="two").validate()


@pytest.mark.parametrize("backend,recompute", [("reference", "none"), ("triton", "none"), ("triton", "stream-ops")])
def test_fused_branch_norm_equals_the_branch_norm(backend, recompute, request):
    """residual.fuse_branch_norm: the sub-layer's RMSNorm applied inside mHC's pre op gives the LM the
    same loss and gradients (the norm gains' included) as the branch normalizing (fp32 here, so the
    fused form's unrounded aggregate changes nothing)."""
    if backend == "triton":
        request.getfixturevalue("triton_cpu")
    la, ga = _grads_once(backend, "linked", recompute, fuse_branch_norm=False)
    lb, gb = _grads_once(backend, "linked", recompute, fuse_branch_norm=True)
    assert abs(la - lb) < 1e-6
    for k in ga:
        torch.testing.assert_close(gb[k], ga[k], rtol=1e-5, atol=1e-6, msg=k)
    assert any("attn_norm" in k and g.abs().sum() > 0 for k, g in gb.items())


def test_fused_branch_norm_reaches_the_pre_op(monkeypatch):
    """With fuse_branch_norm the norm's weight goes to mhc_pre_linked (and the branch gets no second norm)."""
    from mhc_repro.residual import base, mhc_ops

    monkeypatch.setattr(base, "_OPS", {})  # op namespaces are cached: rebuild them with the spy
    seen = []
    real = mhc_ops.mhc_pre_linked
    monkeypatch.setattr(mhc_ops, "mhc_pre_linked", lambda *a, **kw: (seen.append(kw.get("norm_weight")), real(*a, **kw))[1])
    _grads("reference", "linked", fuse_branch_norm=True)
    assert len(seen) == 4 and all(w is not None and w.dim() == 1 for w in seen)  # 2 blocks x 2 sub-layers
    seen.clear()
    _grads("reference", "linked", fuse_branch_norm=False)
    assert len(seen) == 4 and all(w is None for w in seen)
    seen.clear()
    _grads("reference", "linked")  # the default fuses
    assert len(seen) == 4 and all(w is not None for w in seen)


@pytest.mark.parametrize("backend,recompute",
                         [("reference", "none"), ("triton", "none"), ("triton", "stream-post")])
def test_proj_handoff_equals_the_plain_chain(backend, recompute, request):
    """residual.proj_handoff: the attention post op forms the FFN sub-layer's projection; the LM's loss
    and every gradient (φ of the FFN sub-layers included) are those without it."""
    if backend == "triton":
        request.getfixturevalue("triton_cpu")
    la, ga = _grads_once(backend, "linked", recompute)  # the plain side: shared with the tests above
    lb, gb = _grads(backend, "linked", recompute, proj_handoff=True)
    assert abs(la - lb) < 1e-6
    for k in ga:
        torch.testing.assert_close(gb[k], ga[k], rtol=1e-5, atol=1e-6, msg=k)
    assert all(gb[f"blocks.{i}.ffn_residual.phi"].abs().sum() > 0 for i in range(2))


def test_proj_handoff_hands_one_projection_per_block(monkeypatch):
    from mhc_repro.residual import base, mhc_ops

    monkeypatch.setattr(base, "_OPS", {})  # op namespaces are cached: rebuild them with the spies
    calls = []
    for name in ("mhc_pre_linked", "mhc_post_res_linked", "mhc_post_res_proj_linked"):
        real = getattr(mhc_ops, name)
        monkeypatch.setattr(mhc_ops, name, lambda *a, _n=name, _r=real, **kw: (
            calls.append((_n, kw.get("proj") is not None)), _r(*a, **kw))[1])
    _grads("reference", "linked", proj_handoff=True)
    pre = [p for n, p in calls if n == "mhc_pre_linked"]
    posts = [n for n, _ in calls if n != "mhc_pre_linked"]
    assert pre == [False, True, False, True]  # 2 blocks: attention forms its own, the FFN gets it
    assert posts == ["mhc_post_res_proj_linked", "mhc_post_res_linked"] * 2
    calls.clear()
    _grads("reference", "linked", proj_handoff=True, use_h_pre=False)  # an ablation: three ops, no handoff
    assert calls == []
