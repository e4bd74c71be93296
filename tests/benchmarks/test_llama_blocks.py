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
    b.fuse_norm = True  # the branch's RMSNorm inside pre: the same values in fp32, the norm's weight learns
    b.n1.weight.data.mul_(1.5)
    b.zero_grad()
    y_fused = b(x)
    y_fused.square().mean().backward()
    b.fuse_norm = False
    torch.testing.assert_close(y_fused, b(x), rtol=1e-5, atol=1e-5)
    assert b.n1.weight.grad is not None and b.n1.weight.grad.abs().sum() > 0


def test_xl_block_hands_the_projection_on():
    """An `xl` block (reference ops): sub-layer 0's post op forms sub-layer 1's projection; with the next
    block's φ[0] the block returns (x, (m, Σx²)) for it, which that block takes as ``proj``. The same
    values as the linked block."""
    ops = get_mhc_ops("reference")
    a, b = _block(4, ops), _block(4, ops)
    for blk in (a, b):
        blk.linked = blk.fuse_norm = True
    x = torch.randn(B, T, 4, C, dtype=torch.float64)
    a.double(), b.double()
    y_plain = b(a(x))
    a.xl = b.xl = True
    y_a, (m, ss) = a(x, None, b.phi[0])
    assert m.shape == (B * T, 4 * 4 + 2 * 4) and ss.shape == (B * T, ) and not m.requires_grad
    torch.testing.assert_close(m, y_a.detach().reshape(B * T, -1) @ b.phi[0].detach())
    y = b(y_a, (m, ss))  # the last block: no phi_next, x alone
    torch.testing.assert_close(y, y_plain, rtol=1e-10, atol=1e-12)
