"""The lm-eval adapter on lm-eval ``Instance`` requests, with the project's LM (random tiny mHC model)."""

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from mhc_repro.evaluation.lm_model import MhcReproLM

from .standin import real_lm


@pytest.fixture(scope="module")
def lm(tokenizer):
    return MhcReproLM(model=real_lm("tiny", "mhc", tokenizer.get_vocab_size()), tokenizer=tokenizer,
                      batch_size=3, device="cpu", max_length=48)


def _inst(kind, args, i=0):
    return Instance(request_type=kind, doc={}, arguments=args, idx=i)


def _direct_logprob(lm, ctx_ids, cont_ids):
    with torch.no_grad():
        logp = torch.log_softmax(lm.model(torch.tensor([ctx_ids + cont_ids]))[0, :-1], -1)
    return logp[len(ctx_ids) - 1:].gather(-1, torch.tensor(cont_ids)[:, None]).sum().item()


PAIRS = [("Question: How do I boil water?\nAnswer:", " Put it in a pot."),
         ("The kneecap is also called the", " patella"),
         ("Q: 2 + 2 =", " 4"),
         ("", "Standalone text scored after the EOS prefix."),
         ("Which planet is known as the Red Planet?\nAnswer:", " Mars"),
         ("Sort: pear apple", " apple pear")]


def test_loglikelihood_matches_direct_forward_in_order(lm, tokenizer):
    out = lm.loglikelihood([_inst("loglikelihood", p, i) for i, p in enumerate(PAIRS)])
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False).ids  # noqa: E731
    for (ctx, cont), (score, _) in zip(PAIRS, out):
        if ctx:
            whole, c = enc(ctx + cont), enc(ctx)
            ref = _direct_logprob(lm, c, whole[len(c):])
        else:
            ref = _direct_logprob(lm, [lm.eot_token_id], enc(cont))
        assert score == pytest.approx(ref, abs=1e-4)


def test_loglikelihood_rolling_sums_disjoint_windows(lm, tokenizer):
    short = "Tom has 4 apples and buys 3 more."
    long = " ".join(["The expedition crossed the desert in April and reached the mountains in June."] * 6)
    ids_short, ids_long = (tokenizer.encode(s, add_special_tokens=False).ids for s in (short, long))
    assert len(ids_long) > 2 * lm.max_length  # several windows
    out = lm.loglikelihood_rolling([_inst("loglikelihood_rolling", (short,)), _inst("loglikelihood_rolling", (long,), 1)])
    assert out[0] == pytest.approx(_direct_logprob(lm, [lm.eot_token_id], ids_short), abs=1e-4)
    windows = map(make_disjoint_window, get_rolling_token_windows(ids_long, lm.eot_token_id, lm.max_length, 1))
    ref = sum(_direct_logprob(lm, c, t) for c, t in windows)
    assert out[1] == pytest.approx(ref, abs=1e-3)


def test_generate_until_cuts_at_stop_strings_and_keeps_order(lm):
    prompts = ["Q: Tom has 4 apples. How many?\nA:", "Question: What is the capital of France?\nAnswer:",
               "Sort the following words: zebra lion cat\n"]
    free = lm.generate_until([_inst("generate_until", (p, {"until": [], "max_gen_toks": 12}), i)
                              for i, p in enumerate(prompts)])
    stop = "e"
    assert any(stop in t for t in free)
    # Mixed settings in one call: grouped internally, returned in request order.
    reqs = [_inst("generate_until", (prompts[0], {"until": [stop], "max_gen_toks": 12}), 0),
            _inst("generate_until", (prompts[1], {"until": [], "max_gen_toks": 12}), 1),
            _inst("generate_until", (prompts[2], {"until": stop, "max_gen_toks": 12}), 2),
            _inst("generate_until", (prompts[0], {"until": ["\u2603"], "max_gen_toks": 5, "do_sample": False}), 3)]
    out = lm.generate_until(reqs)
    assert out[0] == free[0].split(stop)[0] and out[2] == free[2].split(stop)[0]
    assert out[1] == free[1]
    assert free[0].startswith(out[3]) and len(lm.tok_encode(out[3])) <= 5


def test_generation_cap_and_sampling_refusal(tokenizer):
    capped = MhcReproLM(model=real_lm("tiny", "residual", tokenizer.get_vocab_size()), tokenizer=tokenizer,
                        max_length=48, max_gen_toks_cap=3)
    (text,) = capped.generate_until([_inst("generate_until", ("Q: hi\nA:", {"until": [], "max_gen_toks": 40}))])
    assert 0 < len(capped.tok_encode(text)) <= 3
    with pytest.raises(ValueError, match="greedily"):
        capped.generate_until([_inst("generate_until", ("x", {"do_sample": True, "temperature": 0.7}))])


def test_constructor_errors(tokenizer):
    with pytest.raises(ValueError, match="exactly one"):
        MhcReproLM()
    with pytest.raises(ValueError, match="tokenizer"):
        MhcReproLM(model=real_lm("tiny", "residual", 512))
