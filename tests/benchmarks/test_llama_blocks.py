"""benchmarks/llama_blocks.py (the benchmark's block) on CPU: the residual block and the mHC block
(n = 4, reference ops; three ops and the linked pair agree) run forward and backward."""

import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks"))
import llama_blocks  # noqa: E402

from mhc_repro.kernels import get_mhc_ops  # noqa: E402

B, T, C = 2, 8, 64


def _block(n, ops):
    torch.manual_seed(0)
    b = llama_blocks.Block(C, n, ops)
    b.attn = llama_blocks.Attention(C, head_dim=16)  # C = 64: the default head_dim 128 leaves no head
    return b


def test_residual_block_shapes_and_grads():
    b = _block(1, None)
    x = torch.randn(B, T, C, requires_grad=True)
    y = b(x)
    y.square().mean().backward()
    assert y.shape == x.shape and torch.isfinite(x.grad).all()


def test_mhc_block_reference_ops():
    b = _block(4, get_mhc_ops("reference"))
    x = torch.randn(B, T, 4, C, requires_grad=True)
    y = b(x)
    y.square().mean().backward()
    assert y.shape == x.shape and torch.isfinite(x.grad).all() and b.phi.grad is not None
    b.linked = True  # the linked pair: same values
    torch.testing.assert_close(b(x), y, rtol=1e-5, atol=1e-5)


def test_bench_stack_forward_cpu():
    """bench_mhc.build + stack_forward (the timed step's forward) on CPU, residual and reference mHC."""
    import bench_mhc

    x0 = torch.randn(1, 8, 128, dtype=torch.bfloat16, requires_grad=True)
    for kind, n in (("residual", 1), ("mhc_ref", 4)):
        blocks, fns = bench_mhc.build(kind, 128, 4, 2, False, torch.device("cpu"))
        out = bench_mhc.stack_forward(fns, x0, n)
        out.float().square().mean().backward()
        assert out.shape == x0.shape and all(p.grad is not None for p in blocks.parameters()), kind


def test_block_fns_collapse_inside_the_last_block():
    """n-stream stacks sum the streams in the last block's function (compiled with it), as LM.forward
    hands its collapse to the last block; the other blocks keep the stream."""
    import bench_mhc

    blocks, fns = bench_mhc.build("mhc_ref", 128, 4, 2, False, torch.device("cpu"))
    x = torch.randn(1, 8, 4, 128, dtype=torch.bfloat16)
    with torch.no_grad():
        assert fns[0](x).shape == x.shape and torch.equal(fns[0](x), blocks[0](x))
        assert torch.equal(fns[1](x), blocks[1](x).sum(2))
    res_blocks, res_fns = bench_mhc.build("residual", 128, 4, 2, False, torch.device("cpu"))
    assert all(f is b for f, b in zip(res_fns, res_blocks))  # no streams, nothing to collapse
