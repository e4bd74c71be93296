"""benchmarks/xl_bwd_probe.py: the fused cross-layer backward (post_res backward of l finishing the dx
pass of l+1, x_{l+1} recomputed) against a float64 reference and against today's two kernels, on the
Triton interpreter (CPU) and on CUDA."""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def probe():
    pytest.importorskip("triton")
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import xl_bwd_probe

    # the kernel is decorated at import: under the interpreter only if TRITON_INTERPRET was set first
    # (conftest sets it at collection on a machine without CUDA)
    return importlib.reload(xl_bwd_probe)


# odd token counts, C not a multiple of the chunk (80 with BC 64), one and several splits / chunks
CASES = [(37, 64, (16, 64, 2, 4, 2)), (70, 80, (32, 64, 2, 4, 2)), (45, 96, (32, 32, 4, 4, 2)),
         (33, 128, (16, 128, 2, 8, 1))]


@pytest.mark.parametrize("N,C,cfg", CASES)
def test_fused_equals_reference_and_the_pair(fused, probe, device, N, C, cfg):
    from mhc_repro.kernels import launch

    ins = probe.random_inputs(N, C, device, seed=N + C)
    with launch.direct_launches():
        out = probe.launch_xl_bwd(*ins, cfg=cfg)
        xn = launch.launch_post_res(*ins[6:])
        pair = probe.launch_pair(*ins, xn)
    ref = probe.reference(*ins)
    assert probe.within(probe.compare(out, ref)), probe.compare(out, ref)
    assert probe.within(probe.compare(pair, ref))  # the bound holds for today's path too
    assert probe.within(probe.compare(out, pair), 1e-3, 1e-2), probe.compare(out, pair)


def test_one_bf16_mma_for_phi(fused, probe, device):
    # precision "bf16": φ and dm rounded once, one MMA per product (LO off), as the dx pass's "bf16"
    from mhc_repro.kernels import launch

    ins = probe.random_inputs(29, 64, device, seed=3)
    with launch.direct_launches():
        out = probe.launch_xl_bwd(*ins, cfg=(16, 64, 2, 4, 2), precision="bf16")
        xn = launch.launch_post_res(*ins[6:])
        pair = probe.launch_pair(*ins, xn, precision="bf16")
    assert probe.within(probe.compare(out, probe.reference(*ins)))
    # dφ apart: with one bf16 part, dm's rounding shows, and the interpreter rounds fp32 -> bf16 toward
    # zero (checked here: Triton 3.9) where the pair's dφ GEMM runs in torch (round to nearest) on CPU
    errs = probe.compare(out, pair)
    keep = errs if device == "cuda" else {k: v for k, v in errs.items() if k != "dphi"}
    assert probe.within(keep, 1e-3, 1e-2), errs


@pytest.mark.parametrize("term", ["c", "dh", "dm"])
def test_the_check_sees_a_missing_term(probe, term):
    # the reference with one term of g left out must fail the bound the kernel is held to
    ins = list(probe.random_inputs(40, 64, "cpu", seed=5))
    full = probe.reference(*ins)
    idx = {"c": 4, "dh": 1, "dm": 3}[term]
    ins[idx] = torch.zeros_like(ins[idx])
    assert not probe.within(probe.compare(probe.reference(*ins), full))


def test_main_refuses_an_existing_out_and_a_machine_without_cuda(probe, tmp_path):
    out = tmp_path / "r.json"
    out.write_text("{}")
    with pytest.raises(SystemExit, match="exists"):
        probe.main(["--out", str(out)])
    assert out.read_text() == "{}"
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="CUDA"):
            probe.main([])


def test_an_ablation_leaves_its_piece_out(fused, probe, device):
    # ABL bit 4 drops dm·φᵀ from g: P_l must then miss that term (ablation timings are of a kernel that
    # really skips the work) while the bits that keep g (1, 2) leave P_l as it was
    from mhc_repro.kernels import launch

    ins = probe.random_inputs(24, 64, device, seed=9)
    with launch.direct_launches():
        full = probe.launch_xl_bwd(*ins, cfg=(16, 64, 2, 4, 2))
        no_mma = probe.launch_xl_bwd(*ins, cfg=(16, 64, 2, 4, 2), abl=4)
        no_red = probe.launch_xl_bwd(*ins, cfg=(16, 64, 2, 4, 2), abl=3)
    assert not probe.within({"P": probe.compare(no_mma, full)["P"]}, 1e-3, 1e-2)
    assert torch.equal(no_red[0], full[0]) and torch.equal(no_red[1], full[1])
