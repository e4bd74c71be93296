"""GPU checks of the LM: bf16 autocast training step for every variant x small preset, KV cache on CUDA,
and one training step of the paper's 3B preset (prints time and peak memory)."""

import time

import pytest
import torch
import torch.nn.functional as F

from mhc_repro.model import LM
from mhc_repro.presets import get_preset, with_variant

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _step(m: LM, idx: torch.Tensor) -> torch.Tensor:
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = m(idx[:, :-1])
    assert logits.dtype == torch.float32
    loss = F.cross_entropy(logits.flatten(0, 1), idx[:, 1:].flatten())
    loss.backward()
    return loss


@pytest.mark.parametrize("preset", ["tiny", "tiny-moe"])
@pytest.mark.parametrize("variant", ["residual", "hc", "mhc"])
def test_bf16_step_and_cache_on_cuda(preset, variant):
    torch.manual_seed(0)
    m = LM(with_variant(get_preset(preset), variant)).cuda()
    idx = torch.randint(0, m.cfg.vocab_size, (4, 65), device="cuda")
    loss = _step(m, idx)
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    m.eval()
    with torch.no_grad():
        full = m(idx[:, :12])
        cache = m.new_cache(4, 12)
        inc = torch.cat([m(idx[:, :6], cache=cache)] + [m(idx[:, t : t + 1], cache=cache) for t in range(6, 12)], 1)
    torch.testing.assert_close(inc, full, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("variant", ["residual", "mhc"])
def test_paper_3b_training_step(variant):
    torch.manual_seed(0)
    cfg = with_variant(get_preset("3b"), variant)
    m = LM(cfg).cuda()
    seq = 4096
    idx = torch.randint(0, cfg.vocab_size, (1, seq + 1), device="cuda")
    _step(m, idx)  # warm-up
    m.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    loss = _step(m, idx)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    assert torch.isfinite(loss) and abs(loss.item() - 11.77) < 0.5  # ~ln(129280) at init
    print(f"\n3b {variant}: fwd+bwd of {seq} tokens (fp32 params, bf16 autocast) {dt * 1e3:.0f} ms, "
          f"{seq / dt:.0f} tok/s, peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


@pytest.mark.parametrize("compiled", [False, True])
def test_proj_handoff_on_cuda_matches_the_plain_chain(compiled):
    """residual.proj_handoff on a bf16 stream (the Gluon kernel on an H200): the LM's bf16-autocast step
    gives the loss and gradients of the plain chain, up to the projection's summation order."""
    from mhc_repro.kernels import cross_layer

    runs = []
    for handoff in (False, True):
        torch.manual_seed(0)
        cfg = with_variant(get_preset("tiny"), "mhc", backend="triton", stream_dtype="bfloat16",
                           proj_handoff=handoff)
        m = LM(cfg).cuda()
        if compiled:
            for b in m.blocks:
                b.compile(fullgraph=True)
        idx = torch.randint(0, cfg.vocab_size, (4, 129), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
        loss = _step(m, idx)
        runs.append((loss.item(), {k: p.grad.float() for k, p in m.named_parameters()}))
    x = torch.zeros(8, 4, 128, device="cuda", dtype=torch.bfloat16)
    if torch.cuda.get_device_capability() == (9, 0):
        assert cross_layer.gluon_unusable(x, x[:, 0], "bf16x2") is None  # the Gluon kernel ran
    (la, ga), (lb, gb) = runs
    assert abs(la - lb) < 2e-3 * abs(la)
    for k in ga:
        scale = ga[k].abs().max().item() + 1e-6
        assert (gb[k] - ga[k]).abs().max().item() < 5e-2 * scale, k


def test_compiled_recompute_units_match_no_recompute():
    """residual.recompute_blocks=2 (units of two blocks) with the fused kernels, each unit compiled through
    its first block by Inductor: the same loss and gradients as without recomputation (fp32, so that
    only the summation order differs)."""
    grads = {}
    for name, res in (("none", {}), ("units", {"recompute": "stream-ops", "recompute_blocks": 2})):
        cfg = with_variant(get_preset("tiny"), "mhc", backend="triton", **res)
        torch.manual_seed(0)
        m = LM(cfg.validate()).cuda()
        idx = torch.randint(0, cfg.vocab_size, (2, 129), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
        with torch.no_grad():
            m(idx[:, :-1])  # eager first: resolves the ops outside the traced code
        torch._dynamo.reset()
        for block in m.blocks:
            block.compile(fullgraph=True)
        loss = F.cross_entropy(m(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        loss.backward()
        grads[name] = (loss.detach(), {k: p.grad for k, p in m.named_parameters()})
    torch._dynamo.reset()
    torch.testing.assert_close(grads["units"][0], grads["none"][0], rtol=1e-5, atol=1e-5)
    for k, g in grads["none"][1].items():  # to the tensor's scale: Inductor fuses the two graphs differently
        err = (grads["units"][1][k] - g).abs().max().item()
        assert err <= 1e-3 * g.abs().max().item() + 1e-7, (k, err)
