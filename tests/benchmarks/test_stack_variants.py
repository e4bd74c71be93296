"""benchmarks/stack_variants.py on CPU: the stacks the benchmark scripts build, their forward and inputs."""

import functools
import os
import sys

import pytest
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


def _stack_grads(kind, c=128, n_blocks=3, compiled=False):
    blocks, fns = stack_variants.build(kind, c, 4, n_blocks, compiled, torch.device("cpu"))
    x0 = torch.randn(1, 8, c, dtype=torch.bfloat16, generator=torch.Generator().manual_seed(0)).requires_grad_()
    out = stack_variants.stack_forward(fns, x0)
    out.float().square().mean().backward()
    return [out.detach(), x0.grad] + [p.grad for p in blocks.parameters()]


@functools.cache
def _eager_stack_grads(kind, n_blocks):
    """_stack_grads, eager, once per process: the interpreted fused stacks take seconds, and the same
    eager run is a side of two tests below (which only read it)."""
    return _stack_grads(kind, n_blocks=n_blocks)


def _assert_near(got, want, tol):
    """Every tensor of ``got`` within relative error ``tol`` (float64 norms) of ``want``'s."""
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a is not None and b is not None, i
        err = ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()
        assert err < tol, (i, err)


def test_xl_stack_is_the_linked_stack_reference():
    """*_xl (reference ops): each post op hands the next sub-layer its projection, across the blocks
    too; the output and every gradient as the linked stack's (bf16 stream: r from Σx² / K instead of
    the mean may move a rounding)."""
    _assert_near(_stack_grads("mhc_ref_linked_fnorm_xl"), _stack_grads("mhc_ref_linked_fnorm"), 1e-2)


def test_xl_stack_is_the_linked_stack_fused(triton_cpu):
    """*_xl with the fused kernels under the interpreter: the Triton pair runs in each cross-layer post
    op, the same kernels as the linked stack, so the same bits."""
    plain = _stack_grads("mhc_fused_linked_fnorm", n_blocks=2)
    for a, b in zip(_eager_stack_grads("mhc_fused_linked_fnorm_xl", 2), plain):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["mhc_ref_linked_fnorm_xl", "mhc_fused_linked_fnorm_xl"])
def test_xl_stack_compiles_fullgraph(monkeypatch, request, kind):
    """Each block of an *_xl stack compiled alone (aot_eager, fullgraph: no graph break), the (m, Σx²)
    pair an output of one graph and an input of the next: the eager values and gradients (reference
    ops; the fused ones under the interpreter). 2 blocks, the first handing the pair to the second:
    each block is a graph of its own (a third one, ~10 s of compile, added no other boundary; a middle
    block's values are test_xl_stack_is_the_linked_stack_reference's, eager, 3 blocks)."""
    if kind.startswith("mhc_fused"):
        request.getfixturevalue("triton_cpu")
    nb = 2
    real = torch.compile
    monkeypatch.setattr(stack_variants.torch, "compile",
                        lambda f, **opts: real(f, backend="aot_eager", fullgraph=True, dynamic=False))
    torch._dynamo.reset()
    try:
        got = _stack_grads(kind, n_blocks=nb, compiled=True)
    finally:
        torch._dynamo.reset()
    for a, b in zip(got, _eager_stack_grads(kind, nb)):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)


def test_xl_variant_names_and_switch():
    from mhc_repro.kernels import cross_layer

    assert stack_variants.variant_error("mhc_fused_linked_fnorm_xl") is None
    assert stack_variants.variant_error("mhc_fused_linked_fnorm_xlpair") is None
    for bad in ("mhc_fused_xl", "mhc_fused_linked_fnorm_rcops_xl", "residual_xl"):
        assert "_xl (cross-layer handoff) needs an mHC base with _linked and no _rc / _rcops / _rcpost part" in \
            stack_variants.variant_error(bad), bad
    assert cross_layer.USE_GLUON
    with stack_variants.kernel_switches("mhc_fused_linked_fnorm_xlpair"):
        assert not cross_layer.USE_GLUON
    with stack_variants.kernel_switches("mhc_fused_linked_fnorm_xl"):
        assert cross_layer.USE_GLUON
    assert cross_layer.USE_GLUON


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_xl_stack_compiled_on_cuda(monkeypatch):
    """The benchmark's *_xl stack on CUDA (bf16, Inductor, each block fullgraph: the Gluon kernel on
    sm_90): the linked stack's output and gradients within bf16 noise, the Gluon path taken."""
    from mhc_repro.kernels import cross_layer

    real = torch.compile
    monkeypatch.setattr(stack_variants.torch, "compile", lambda f, **opts: real(f, fullgraph=True, **opts))
    calls = []
    monkeypatch.setattr(cross_layer, "_launch_gluon", lambda *a, f=cross_layer._launch_gluon: calls.append(1) or f(*a))
    runs = []
    for kind in ("mhc_fused_linked_fnorm", "mhc_fused_linked_fnorm_xl"):
        torch._dynamo.reset()
        blocks, fns = stack_variants.build(kind, 256, 4, 2, True, torch.device("cuda"))
        x0 = torch.randn(2, 256, 256, device="cuda", dtype=torch.bfloat16,
                         generator=torch.Generator(device="cuda").manual_seed(0)).requires_grad_()
        out = stack_variants.stack_forward(fns, x0)
        out.float().square().mean().backward()
        runs.append([out.detach(), x0.grad] + [p.grad for p in blocks.parameters()])
    torch._dynamo.reset()
    if torch.cuda.get_device_capability() == (9, 0):
        assert len(calls) == 3  # 2 blocks x 2 sub-layers, less the last post op
    _assert_near(runs[1], runs[0], 2e-2)


def _step_grads(kind, device, c=128, n_blocks=2, compiled=False):
    x0 = torch.randn(2, 8 if device == "cpu" else 256, c, device=device, dtype=torch.bfloat16,
                     generator=torch.Generator(device=device).manual_seed(0)).requires_grad_()
    dout = torch.randn(x0.shape, device=device, dtype=torch.bfloat16,
                       generator=torch.Generator(device=device).manual_seed(1))
    step, _, blocks = stack_variants.stack_step(kind, compiled, c, 4, n_blocks, x0, dout)
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    return [x0.grad] + [p.grad for p in blocks.parameters()]


@pytest.mark.parametrize("kind", ["residual", "mhc_ref_linked_fnorm"])
def test_two_stream_step_is_the_step(kind):
    """*_2s (two half batches, on two streams on CUDA, one after the other here): every gradient as the
    whole-batch step's, up to the bf16 rounding of two half-batch weight gradients summed."""
    _assert_near(_step_grads(kind + "_2s", "cpu"), _step_grads(kind, "cpu"), 1e-2)


def test_two_stream_variant_names():
    assert stack_variants.variant_error("mhc_fused_linked_fnorm_2s") is None
    assert stack_variants.variant_error("residual_2s") is None
    assert "_2s (two half batches on two streams) does not combine with _cg" in \
        stack_variants.variant_error("residual_cg_2s")
    x0 = torch.randn(1, 8, 128, dtype=torch.bfloat16, requires_grad=True)
    with pytest.raises(ValueError, match="_2s splits the batch in two halves; got 1 sequences"):
        stack_variants.stack_step("residual_2s", False, 128, 4, 1, x0, torch.randn_like(x0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["residual", "mhc_fused_linked_fnorm"])
def test_two_stream_step_on_cuda(kind):
    """*_2s on CUDA, compiled (the half batches' kernels on two streams, the backward on the forward's
    streams): every gradient as the one-stream step's within bf16 noise."""
    torch._dynamo.reset()
    try:
        _assert_near(_step_grads(kind + "_2s", "cuda", c=256, compiled=True),
                     _step_grads(kind, "cuda", c=256, compiled=True), 2e-2)
    finally:
        torch._dynamo.reset()
