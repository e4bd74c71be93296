"""The batching core on CUDA with the project's LM (Triton mHC kernels selected by backend="auto").
No lm-eval import: runs on the GPU image."""

import pytest
import torch

from mhc_repro.evaluation.engine import Engine

from .standin import real_lm

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("preset,variant", [("tiny", "mhc"), ("tiny-moe", "mhc"), ("tiny", "hc")])
def test_cuda_scores_and_cached_generation(preset, variant):
    model = real_lm(preset, variant, 512).cuda()
    g = torch.Generator().manual_seed(0)
    reqs = [(torch.randint(1, 512, (n,), generator=g).tolist(), torch.randint(1, 512, (3,), generator=g).tolist())
            for n in (5, 40, 17, 90)]
    for bf16, tol in ((False, 1e-3), (True, 0.25)):
        eng = Engine(model, eot_token_id=-1, pad_token_id=0, max_length=128, batch_size=4, device="cuda", bf16=bf16)
        for (ctx, cont), (score, _) in zip(reqs, eng.loglikelihood(reqs)):
            with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=bf16):
                logits = model(torch.tensor([ctx + cont[:-1]], device="cuda"))[0, -3:].float()
            ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(cont, device="cuda")[:, None]).sum().item()
            assert score == pytest.approx(ref, abs=tol)
    eng = Engine(model, eot_token_id=-1, pad_token_id=0, max_length=128, batch_size=4, device="cuda", bf16=False)
    ctxs = [c for c, _ in reqs]
    cached = eng.generate(ctxs, max_gen_toks=8)
    assert [x.tokens for x in cached] == [x.tokens for x in eng.generate(ctxs, max_gen_toks=8, use_cache=False)]
