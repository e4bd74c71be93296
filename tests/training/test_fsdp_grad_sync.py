"""train.fsdp_grad_sync: FSDP2Strategy.block_backward_sync (entered by Lightning around every micro-batch
but the last of an accumulation) keeps FSDP2 from reduce-scattering those micro-batches' gradients in
"step" mode, and the accumulated gradients equal those of "micro_step" mode and of an unsharded model.
FSDP2 on the CPU as a gloo world of one (the collectives are trivial; the sync switch is what is tested)."""
import dataclasses

import pytest
import torch

from mhc_repro.training.fsdp import FSDP2Strategy, shard_lm

from .conftest import world_of_one


@pytest.fixture(scope="module")
def cpu_mesh(tmp_path_factory):
    with world_of_one(tmp_path_factory.mktemp("pg"), "gloo", "cpu") as mesh:
        yield mesh


class _Holder(torch.nn.Module):  # stands in for the LightningModule: the LM is its child, as in LMModule
    def __init__(self, model):
        super().__init__()
        self.model = model


def _grads_after_two_micro_batches(mesh, grad_sync):
    from mhc_repro.model.transformer import LM
    from mhc_repro.presets import get_preset, with_variant

    cfg = dataclasses.replace(with_variant(get_preset("tiny"), "mhc"), vocab_size=64, n_blocks=2, d_model=32)
    torch.manual_seed(0)
    model = LM(cfg)
    if grad_sync is not None:
        shard_lm(model, mesh, bf16=False)
    strategy = FSDP2Strategy(grad_sync=grad_sync or "micro_step")
    strategy._lightning_module = _Holder(model)
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 64, (2, 16), generator=g) for _ in range(2)]
    with strategy.block_backward_sync():  # the first micro-batch: Lightning blocks the sync
        model(batches[0]).float().logsumexp(-1).mean().backward()
    produced = sum(p.grad is not None for p in model.parameters())
    model(batches[1]).float().logsumexp(-1).mean().backward()
    grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
             for n, p in model.named_parameters()}
    return produced, grads


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_step_mode_syncs_once_per_step_with_the_same_gradients(cpu_mesh):
    n_params = len(_grads_after_two_micro_batches(cpu_mesh, None)[1])
    produced_micro, micro = _grads_after_two_micro_batches(cpu_mesh, "micro_step")
    produced_step, step = _grads_after_two_micro_batches(cpu_mesh, "step")
    _, plain = _grads_after_two_micro_batches(cpu_mesh, None)
    assert produced_micro == n_params  # reduce-scattered after the first micro-batch already
    assert produced_step == 0  # held unsharded until the last micro-batch
    for name in plain:
        torch.testing.assert_close(step[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)
        torch.testing.assert_close(micro[name], plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_unknown_grad_sync_is_a_one_line_error():
    from mhc_repro.training.compose import build_config

    with pytest.raises(ValueError, match="train.fsdp_grad_sync='always' is unknown; allowed: micro_step, step"):
        build_config([], ["train.fsdp_grad_sync=always"], env={})


def test_run_passes_the_option_to_the_strategy():
    from mhc_repro.training.compose import build_config
    from mhc_repro.training.run import _strategy

    cfg = build_config([], ["train.strategy=fsdp", "train.fsdp_grad_sync=step"], env={})
    assert _strategy(cfg).grad_sync == "step"
