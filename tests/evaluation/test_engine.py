"""The batching core: scores equal a direct forward pass, order survives batching, cached greedy decoding
equals uncached decoding (batched, left-padded), truncation and stop strings behave."""

import pytest
import torch

from mhc_repro.evaluation.engine import Engine

from .standin import CountingLM, StandInLM, real_lm

V = 512


def _requests(n=9, seed=1, max_ctx=40, max_cont=6):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))  # noqa: E731
    return [(torch.randint(1, V, (rnd(1, max_ctx),), generator=g).tolist(),
             torch.randint(1, V, (rnd(1, max_cont),), generator=g).tolist()) for _ in range(n)]


def _direct(model, ctx, cont, max_length):
    """Reference: one unpadded forward of the (left-truncated) sequence, summing continuation log-probs."""
    seq = (ctx + cont)[-(max_length + 1):]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([seq[:-1]]))[0], -1)
    c = min(len(cont), max_length)
    picked = logp[-c:].gather(-1, torch.tensor(seq[-c:])[:, None])[:, 0]
    return picked.sum().item(), bool((logp[-c:].argmax(-1) == torch.tensor(seq[-c:])).all())


MODELS = {
    "standin": lambda: StandInLM(vocab_size=V),
    "lm-tiny-mhc": lambda: real_lm("tiny", "mhc", V),
    "lm-tiny-moe-hc": lambda: real_lm("tiny-moe", "hc", V),
}


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    return MODELS[request.param]()


def test_loglikelihood_equals_direct_forward_in_input_order(model):
    reqs = _requests()
    batched = Engine(model, eot_token_id=0, max_length=64, batch_size=4).loglikelihood(reqs)
    single = Engine(model, eot_token_id=0, max_length=64, batch_size=1).loglikelihood(reqs)
    for (ctx, cont), (s, greedy), (s1, _) in zip(reqs, batched, single):
        ref, ref_greedy = _direct(model, ctx, cont, 64)
        assert s == pytest.approx(ref, abs=1e-4) and s1 == pytest.approx(ref, abs=1e-4)
        assert greedy == ref_greedy
    # The batches were sorted by length, so input order is only preserved if we restored it.
    assert [len(c) + len(t) for c, t in reqs] != sorted((len(c) + len(t) for c, t in reqs), reverse=True)


def test_loglikelihood_truncates_long_context_from_the_left(model):
    reqs = _requests(n=3, seed=2, max_ctx=90)
    out = Engine(model, eot_token_id=0, max_length=24, batch_size=3).loglikelihood(reqs)
    assert any(len(c) + len(t) > 25 for c, t in reqs)
    for (ctx, cont), (s, _) in zip(reqs, out):
        assert s == pytest.approx(_direct(model, ctx, cont, 24)[0], abs=1e-4)


def test_greedy_cached_equals_uncached_batched_with_left_padding(model):
    ctxs = [c for c, _ in _requests(n=4, seed=3)]
    assert len({len(c) for c in ctxs}) > 1  # ragged: the batch is left-padded
    # eot -1 is never predicted, so every row runs the full budget (pads are id 0)
    eng = Engine(model, eot_token_id=-1, pad_token_id=0, max_length=64, batch_size=4)
    cached = eng.generate(ctxs, max_gen_toks=8)
    uncached = eng.generate(ctxs, max_gen_toks=8, use_cache=False)
    one_by_one = Engine(model, eot_token_id=-1, pad_token_id=0, max_length=64, batch_size=1).generate(ctxs, max_gen_toks=8)
    assert [g.tokens for g in cached] == [g.tokens for g in uncached] == [g.tokens for g in one_by_one]
    assert all(len(g.tokens) == 8 for g in cached)


def test_generation_truncates_context_and_clips_budget():
    model = StandInLM(vocab_size=V)
    eng = Engine(model, eot_token_id=0, max_length=32, batch_size=2)
    long_ctx = list(range(1, 60))
    assert eng.generation_budget(100) == 16  # half the window is kept for the prompt
    out = eng.generate([long_ctx], max_gen_toks=8)[0]
    ref = eng.generate([long_ctx[-(32 - 8):]], max_gen_toks=8)[0]
    assert out.tokens == ref.tokens and len(out.tokens) <= 8


def _decode(ids):
    return "".join(chr(ord("a") + i % 26) for i in ids)


def test_stop_strings_cut_the_text():
    eng = Engine(CountingLM(50), eot_token_id=49, max_length=64, batch_size=3)
    # Greedy continuation of [0] is 1, 2, 3, ... -> "bcdefgh..."
    out = eng.generate([[0], [0], [10]], max_gen_toks=10, until=["ef", "zz"], decode=_decode)
    assert out[0].text == out[1].text == "bcd"      # cut before a stop string spanning two tokens
    assert out[0].tokens == [1, 2, 3, 4, 5]         # stopped right after the token completing it
    assert out[2].text == "lmnopqrstu"              # no stop string ahead: max_gen_toks tokens
    assert eng.generate([[0]], max_gen_toks=4, decode=_decode)[0].text == "bcde"


def test_generation_stops_at_eos():
    eng = Engine(CountingLM(50), eot_token_id=5, max_length=64, batch_size=2)
    out = eng.generate([[2], [20]], max_gen_toks=6, decode=_decode)
    assert out[0].tokens == [3, 4] and out[0].text == "de"   # EOS itself is dropped
    assert len(out[1].tokens) == 6


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="batch_size"):
        Engine(StandInLM(), eot_token_id=0, max_length=8, batch_size=0)
    eng = Engine(StandInLM(), eot_token_id=0, max_length=8)
    with pytest.raises(ValueError, match="empty continuation"):
        eng.loglikelihood([([1], [])])
    with pytest.raises(ValueError, match="decode"):
        eng.generate([[1]], max_gen_toks=2, until=["x"])
