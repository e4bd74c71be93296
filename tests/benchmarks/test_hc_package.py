"""benchmarks/hc_package.py: the `hyper-connections` package's mHC around the benchmark's blocks (CPU).

The package is an optional extra (``.[bench]``); CI does not install it, so every test that needs it
is skipped there. Only the "not importable -> skipped" path of bench_mhc runs without it.
"""

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks"))
import bench_mhc  # noqa: E402
import hc_package  # noqa: E402
import llama_blocks  # noqa: E402

B, T, N, C = 2, 16, 4, 64


@pytest.fixture
def pkg():
    pytest.importorskip("hyper_connections")
    return pytest.importorskip("hyper_connections.mHCv2")


def small_attn(c):
    return llama_blocks.Attention(c, head_dim=16)  # C=64: the default head_dim 128 leaves no head


def test_stack_forward_backward_fp32(pkg):
    blocks = hc_package.build_hc_package_blocks(C, N, 2, "cpu", attn_cls=small_attn, dtype=torch.float32)
    x0 = torch.randn(B, T, C, requires_grad=True)
    x = x0.unsqueeze(2).expand(-1, -1, N, -1).contiguous()  # as bench_stack: [B, T, n, C]
    for b in blocks:
        x = b(x)
    assert x.shape == (B, T, N, C)
    x.sum(2).backward(torch.randn(B, T, C))
    assert torch.isfinite(x0.grad).all() and x0.grad.abs().sum() > 0
    for name, p in blocks.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert blocks[0].hc1.dynamic_alpha_fn.grad.abs().sum() > 0  # the dynamic (input-dependent) part learns


def test_dtypes_and_version(pkg):
    blocks = hc_package.build_hc_package_blocks(C, N, 1, "cpu", attn_cls=small_attn)
    for name, p in blocks.named_parameters():
        want = torch.float32 if ".hc" in name else torch.bfloat16
        assert p.dtype == want, name
    assert blocks[0].hc1.residual_mix_constraint_fn.keywords["iters"] == 20
    assert hc_package.hc_package_version() == "0.4.11"


def test_same_function_as_exported_mhc(pkg):
    """mHCv2 ([..., n, C] layout) == the exported hyper_connections.mHC ([(B n), T, C] layout)."""
    from hyper_connections import mHC

    torch.manual_seed(1)
    v1, v2 = mHC(N, dim=C, layer_index=1), pkg.ManifoldConstrainedHyperConnections(N, dim=C, layer_index=1)
    with torch.no_grad():
        for p in v1.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        v2.load_state_dict({k: v.reshape(v2.state_dict()[k].shape) for k, v in v1.state_dict().items()})
    f = torch.nn.Linear(C, C)
    x = torch.randn(B, T, N, C)
    h2, add2 = v2(x)
    h1, add1 = v1(x.permute(0, 2, 1, 3).reshape(B * N, T, C))
    y1 = add1(f(h1)).reshape(B, N, T, C).permute(0, 2, 1, 3)
    torch.testing.assert_close(add2(f(h2)), y1)


def test_exact_side_is_per_source_stream(pkg):
    """The package's Sinkhorn ends on the output index: Σ_out H_res[out, src] = 1, i.e. the residual mix
    conserves the stream sum (PAPER.md's convention has the rows, Σ_src, exact instead)."""
    torch.manual_seed(2)
    hc = pkg.ManifoldConstrainedHyperConnections(N, dim=C, layer_index=0)
    with torch.no_grad():
        hc.dynamic_alpha_fn.normal_(0, 30.0)  # far from the identity init
    x = torch.randn(B, T, N, C)
    _, mixed, _ = hc.width_connection(x)
    torch.testing.assert_close(mixed.sum(-2), x.sum(-2), rtol=1e-5, atol=1e-5)


def test_bench_stack_skips_without_package(monkeypatch):
    monkeypatch.setattr(hc_package, "hc_package_version", lambda: None)
    r = bench_mhc.bench_stack("hc_pkg", False, C, N, 1, None, None, None)
    assert r == dict(error="hyper-connections not importable: skipped")
