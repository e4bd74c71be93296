"""benchmarks/stack_variants.py on CPU: the stacks the benchmark scripts build, their forward and inputs."""

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks"))
import stack_variants  # noqa: E402


def test_bench_stack_forward_cpu():
    """build + stack_forward (the timed step's forward) on CPU, residual and reference mHC."""
    x0 = torch.randn(1, 8, 128, dtype=torch.bfloat16, requires_grad=True)
    for kind, n in (("residual", 1), ("mhc_ref", 4)):
        blocks, fns = stack_variants.build(kind, 128, 4, 2, False, torch.device("cpu"))
        out = stack_variants.stack_forward(fns, x0)
        out.float().square().mean().backward()
        assert out.shape == x0.shape and all(p.grad is not None for p in blocks.parameters()), kind


def test_expansion_inside_the_first_block(monkeypatch):
    """The first compiled function gets x0 [B, T, C] and expands the streams itself (the model's
    layout since session 17); *_expout hands it the broadcast view, expanded outside, as before.
    Same output and gradients either way (torch.compile recorded, not run)."""
    seen = []

    def fake_compile(f, **opts):
        def g(x):
            seen.append((tuple(x.shape), x.stride()))
            return f(x)
        return g

    monkeypatch.setattr(stack_variants.torch, "compile", fake_compile)

    def run(kind):
        seen.clear()
        blocks, fns = stack_variants.build(kind, 128, 4, 2, True, torch.device("cpu"))
        x0 = torch.randn(1, 8, 128, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(0)).requires_grad_()
        out = stack_variants.stack_forward(fns, x0)
        out.float().square().mean().backward()
        return list(seen), out, x0.grad, [p.grad for p in blocks.parameters()]

    a, b = run("mhc_ref"), run("mhc_ref_expout")
    assert a[0][0] == ((1, 8, 128), (1024, 128, 1))  # x0 itself
    assert b[0][0] == ((1, 8, 4, 128), (1024, 128, 0, 1))  # a broadcast view of it
    assert a[0][1] == b[0][1] == ((1, 8, 4, 128), (4096, 512, 128, 1))
    assert a[1].shape == (1, 8, 128) and torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    assert all(torch.equal(u, v) for u, v in zip(a[3], b[3]))


def test_block_fns_collapse_inside_the_last_block():
    """n-stream stacks sum the streams in the last block's function (compiled with it), as LM.forward
    hands its collapse to the last block; the other blocks keep the stream."""
    blocks, fns = stack_variants.build("mhc_ref", 128, 4, 2, False, torch.device("cpu"))
    x = torch.randn(1, 8, 4, 128, dtype=torch.bfloat16)
    x0 = torch.randn(1, 8, 128, dtype=torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(fns[0](x0), blocks[0](x0.unsqueeze(2).expand(-1, -1, 4, -1)))
        assert torch.equal(fns[1](x), blocks[1](x).sum(2))
    res_blocks, res_fns = stack_variants.build("residual", 128, 4, 2, False, torch.device("cpu"))
    assert all(f is b for f, b in zip(res_fns, res_blocks))  # no streams, nothing to collapse


def test_stack_inputs_seeded_by_width():
    from types import SimpleNamespace

    args = SimpleNamespace(blocks=4, blocks_large=2, tokens=16, seq=8)
    nb, x0, dout = stack_variants.stack_inputs(64, args, torch.device("cpu"))
    assert nb == 4 and x0.shape == dout.shape == (2, 8, 64) and x0.requires_grad
    assert torch.equal(stack_variants.stack_inputs(64, args, torch.device("cpu"))[1], x0)  # same inputs every call
    assert stack_variants.stack_inputs(4096, args, torch.device("cpu"))[0] == 2
