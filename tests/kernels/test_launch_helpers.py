"""launch's plain-int cdiv / next-power-of-two (host-side stand-ins for Triton's constexpr_function
forms, which cost ~3 µs a call) agree with Triton's on every value the launchers can see."""

import pytest
import torch

triton = pytest.importorskip("triton")


def test_cdiv_and_p2_match_triton():
    from mhc_repro.kernels import launch

    for v in range(0, 9000):
        assert launch._p2(v) == max(1, triton.next_power_of_2(v)), v
        assert launch._p2(v, 16) == max(16, triton.next_power_of_2(v)), v
    for a in range(0, 600):
        for b in (1, 2, 3, 7, 16, 64, 100, 128, 1024):
            assert launch._cdiv(a, b) == triton.cdiv(a, b), (a, b)


def test_aligned16_real_and_fake_tensors(fused):
    """TMA's 16-byte check: by address on real tensors, by storage offset on fake ones (a trace)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from mhc_repro.kernels import launch

    base = torch.zeros(64, dtype=torch.bfloat16)
    assert launch._aligned16(base) and launch._aligned16(base[8:]) and not launch._aligned16(base[1:])
    with FakeTensorMode():
        fake = torch.zeros(64, dtype=torch.bfloat16)
        assert launch._aligned16(fake[8:]) and not launch._aligned16(fake[3:])
