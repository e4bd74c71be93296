"""post_res_bwd reads its stream gradient g through g's strides.

The last block's stream gradient is the collapse's broadcast: a [N, n, C] view with stream stride 0.
Making it contiguous cost a 335 µs copy per step at C = 2048 (run 78); every tile mode must give
the bits it gives for the materialised g.
"""

from __future__ import annotations

import pytest
import torch

TILES = {
    "mma": ("mma", 16, 32, 4, 2),
    "split": ("split", 2, 16, 2, 3),
    "loop": ("loop", 4, 32, 4, 3),
}


def _strided_grads(N: int, n: int, C: int, dtype, device, gen) -> dict[str, torch.Tensor]:
    row = torch.randn(N, C, generator=gen).to(device=device, dtype=dtype)
    full = torch.randn(n, N, C, generator=gen).to(device=device, dtype=dtype)
    return {
        "broadcast over streams": row.unsqueeze(1).expand(N, n, C),  # stride (C, 0, 1)
        "stream-major storage": full.transpose(0, 1),  # stride (C, N·C, 1)
    }


# CPU (tests/conftest.py): each tile mode in both dtypes, the shapes in turn
@pytest.mark.cpu_cover(cover=[("mode", "dtype")])
@pytest.mark.parametrize("mode", list(TILES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("N,n,C", [(13, 4, 40), (7, 3, 33)])
def test_post_res_bwd_reads_g_by_strides(launch, device, monkeypatch, mode, dtype, N, n, C):
    monkeypatch.setattr(launch, "_PRB", TILES[mode])
    monkeypatch.setattr(launch, "_PRB_FP32", None)
    gen = torch.Generator().manual_seed(N * n + C)
    x = torch.randn(N, n, C, generator=gen).to(device=device, dtype=dtype)
    f = torch.randn(N, C, generator=gen).to(device=device, dtype=dtype)
    h_post = torch.rand(N, n, generator=gen).to(device)
    h_res = torch.rand(N, n, n, generator=gen).to(device)
    for what, g in _strided_grads(N, n, C, dtype, device, gen).items():
        assert not g.is_contiguous()
        got = launch.launch_post_res_bwd(x, f, h_post, h_res, g, True)
        want = launch.launch_post_res_bwd(x, f, h_post, h_res, g.contiguous(), True)
        for name, a, b in zip(("dx", "df", "dH_post", "dH_res"), got, want):
            assert torch.equal(a, b), f"{mode}, {what}: {name} differs from the contiguous g's"


def test_a_broadcast_g_is_not_copied(launch):
    row = torch.randn(5, 8)
    g, strides = launch._rows_by_strides(row.unsqueeze(1).expand(5, 4, 8))
    assert g.data_ptr() == row.data_ptr() and strides == (8, 0)
    g, strides = launch._rows_by_strides(torch.randn(5, 8, 4).transpose(1, 2))  # C not unit-stride
    assert g.is_contiguous() and strides == (32, 8)


def test_the_copy_switch_restores_the_old_path(launch, monkeypatch):
    monkeypatch.setattr(launch, "PRB_G_BY_STRIDES", False)
    g, strides = launch._rows_by_strides(torch.randn(5, 8).unsqueeze(1).expand(5, 4, 8))
    assert g.is_contiguous() and strides == (32, 8)
