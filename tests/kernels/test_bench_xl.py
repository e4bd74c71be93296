"""The benchmark's `_xl` block (attention sub-layer's post op forms the FFN sub-layer's projection,
kernels/cross_layer.py) computes what the linked block computes: fp32, CPU interpreter / CUDA."""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import llama_blocks  # noqa: E402


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _stack(fused, device, xl, n_blocks=2, C=32, n=4):
    torch.manual_seed(0)
    blocks = []
    for _ in range(n_blocks):
        b = llama_blocks.Block(C, n, fused.ops("bf16x2"))
        b.attn = llama_blocks.Attention(C, head_dim=16)
        b = b.to(device)
        b.linked, b.xl, b.precision = True, xl, "bf16x2"
        blocks.append(b)
    llama_blocks.link_blocks(blocks)
    return blocks


def test_xl_block_matches_linked_block(fused, device):
    x0 = torch.randn(2, 8, 4, 32, device=device)
    runs = []
    for xl in (False, True):
        (b,) = _stack(fused, device, xl, n_blocks=1)
        x = x0.clone().requires_grad_()
        y = b(x)
        (y * torch.linspace(-1, 1, y.numel(), device=device).view_as(y)).sum().backward()
        runs.append([y.detach(), x.grad] + [p.grad for p in b.parameters()])
    names = ["y", "x", *[k for k, _ in b.named_parameters()]]
    for name, a, c in zip(names, *runs):
        assert _rel(a, c) < 2e-4, (name, _rel(a, c))


def test_xl_needs_linked():
    import bench_mhc

    with pytest.raises(ValueError, match="_xl .* needs _linked"):
        bench_mhc.build("mhc_fused_xl", 128, 4, 1, False, torch.device("cpu"))


def test_xl_block_under_stream_ops_recompute_compiled(fused, device):
    """The `_xl_rcops` variant's block: checkpointed with the stream-ops policy and compiled
    (aot_eager), post_res_proj re-run in backward, same gradients as without either."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.debugging import aot_eager
    from torch.utils.checkpoint import CheckpointPolicy

    from mhc_repro.residual.recompute import SAVE_OPS, checkpoint_block, stream_ops_policy

    assert stream_ops_policy(None, torch.ops.mhc_repro.post_res_proj.default) == CheckpointPolicy.MUST_RECOMPUTE
    assert "mhc_repro::coefficients_from_stats" in SAVE_OPS
    x0 = torch.randn(2, 8, 4, 32, device=device)
    bw_graphs = []

    def backend(gm, ex):
        return aot_eager(gm, ex, bw_compiler=lambda g, e: (bw_graphs.append(g), make_boxed_func(g.forward))[1])

    grads = []
    for recompute in (False, True):
        (b,) = _stack(fused, device, True, n_blocks=1)
        fn = b
        if recompute:
            torch._dynamo.reset()
            fn = torch.compile(lambda x: checkpoint_block(b.forward, x, mode="stream-ops"), backend=backend,
                               fullgraph=True)
        x = x0.clone().requires_grad_()
        fn(x).square().sum().backward()
        grads.append([x.grad] + [p.grad for p in b.parameters()])
    torch._dynamo.reset()
    for a, c in zip(*grads):
        assert _rel(a, c) < 1e-5
    targets = [str(node.target) for g in bw_graphs for node in g.graph.nodes if node.op == "call_function"]
    assert targets.count("mhc_repro.post_res_proj.default") == 1  # the middle stream, re-run


@pytest.mark.parametrize("compiled", [False, True])
def test_xl_stack_across_blocks_matches(fused, device, compiled):
    """Two chained `xl` blocks (the first block's FFN post op forms the second block's first
    projection), each compiled on its own as in the benchmark: same output and gradients."""
    import bench_mhc
    from torch._dynamo.backends.debugging import aot_eager

    x0 = torch.randn(2, 8, 32, device=device)
    runs = []
    for xl in (False, True):
        blocks = _stack(fused, device, xl)
        torch._dynamo.reset()
        fns = [torch.compile(b, backend=aot_eager, fullgraph=True) if compiled and xl else b for b in blocks]
        x = x0.clone().requires_grad_()
        y = bench_mhc.stack_forward(fns, x, 4)
        (y * torch.linspace(-1, 1, y.numel(), device=device).view_as(y)).sum().backward()
        runs.append([y.detach(), x.grad] + [p.grad for b in blocks for p in b.parameters()])
    torch._dynamo.reset()
    assert len(runs[0]) == len(runs[1])
    for i, (a, c) in enumerate(zip(*runs)):
        assert _rel(a, c) < 2e-4, (i, _rel(a, c))


def test_link_blocks_hands_the_projection_on(fused, device):
    blocks = _stack(fused, device, True)
    out = blocks[0](torch.randn(2, 8, 4, 32, device=device))
    assert isinstance(out, tuple) and len(out) == 3 and out[1].shape == (16, 24) and out[2].shape == (16,)
    assert isinstance(blocks[1](*out), torch.Tensor)  # the last block has no next one
