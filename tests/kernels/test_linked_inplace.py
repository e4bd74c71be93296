"""Under Inductor the linked pair's "add" backward writes the stream gradient over post_res_bwd's
H_resᵀg buffer with no copy (linked.ADD_IN_PLACE): the compiled backward must return post_res_bwd's
own output buffer as x's gradient. A PyTorch that stopped re-inplacing the mutating custom op would
clone it (an extra [N, n, C] read + write per sub-layer) and fail here."""

from __future__ import annotations

import os
import re
import shutil

import pytest
import torch


def _backward_code(ops, device: str) -> str:
    from torch._inductor.utils import run_and_get_code

    def sub(x, phi, a, b, fw):
        bi, hq, hr, xl = ops.mhc_pre_linked(x, phi, a, b, 4)
        return ops.mhc_post_res_linked(xl, torch.tanh(bi * fw), hq, hr)

    g = torch.Generator().manual_seed(0)
    leaves = [torch.randn(13, 4, 24, generator=g), 0.1 * torch.randn(96, 24, generator=g),
              0.5 + torch.rand(3, generator=g), 0.1 * torch.randn(24, generator=g), torch.randn(24, generator=g)]
    leaves = [t.to(device).requires_grad_() for t in leaves]
    torch._dynamo.reset()
    fn = torch.compile(sub, backend="inductor", fullgraph=True)

    def run():
        y = fn(*leaves)
        y.backward(torch.ones_like(y))

    _, codes = run_and_get_code(run)
    torch._dynamo.reset()
    return next(c for c in reversed(codes) if "post_res_bwd" in c)


def _x_grad_is_post_res_buffer(code: str) -> bool:
    """x's gradient (the first returned buffer) is the buffer post_res_bwd wrote: its op's first output
    when registered as a custom op, an argument of its kernel's launch when a triton_op."""
    ret = re.search(r"return \((?:reinterpret_tensor\()?(\w+)", code)
    if not ret:
        return False
    call = re.search(r"(\w+) = torch\.ops\.mhc_repro\.post_res_bwd\.default\(", code)
    if call:
        first = re.search(rf"(\w+) = {call.group(1)}\[0\]", code)
        return bool(first and ret.group(1) == first.group(1))
    launch = re.search(r"post_res_bwd\w*\.run\(([^\n]*)", code)
    return bool(launch and re.search(rf"\b{ret.group(1)}\b", launch.group(1))
                and f"{ret.group(1)} = empty_strided" in code)


def _summary(code: str) -> str:
    """The lines that decide the test, for its failure message."""
    keep = ("post_res_bwd", "pre_linked_bwd", "return (", "clone", "copy_")
    return "\n".join(line.strip() for line in code.splitlines() if any(k in line for k in keep))[-3000:]


@pytest.mark.parametrize("in_place", [True, False])
def test_add_mode_reuses_post_res_buffer(fused, device, monkeypatch, in_place):
    if device == "cpu" and shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("Inductor's CPU backend needs a C++ compiler")
    from mhc_repro.kernels import linked

    monkeypatch.setattr(linked, "LINK_MODE", "add")
    monkeypatch.setattr(linked, "ADD_IN_PLACE", in_place)
    code = _backward_code(fused.ops(), device)
    assert "pre_linked_bwd_add_" in code if in_place else "pre_linked_bwd.default" in code
    assert _x_grad_is_post_res_buffer(code) is in_place, _summary(code)
