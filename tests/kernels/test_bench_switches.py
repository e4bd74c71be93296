"""The benchmark's tile sweep and variant switches patch constants that the kernels really read
(benchmarks/bench_mhc.py and stack_variants.py run only on a GPU; a misnamed patch there would
silently time the defaults)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import bench_mhc  # noqa: E402
import stack_variants  # noqa: E402


def test_sweep_tables_name_launch_constants(launch):
    for name, cands in bench_mhc.SWEEP.items():
        assert hasattr(launch, name), name
        default = getattr(launch, name)
        assert default in cands, (name, default)  # the sweep re-times the default too


def test_variant_switches_patch_and_restore(fused, launch):
    from mhc_repro.kernels import linked
    from mhc_repro.residual import recompute

    before = (launch._PRB, fused.LAZY_RES_DX, linked.LINK_MODE, linked.ADD_IN_PLACE, recompute.COPY_OPS,
              launch.PROJ_FWD_MERGED, launch.PROJ_DX_TMA_ACC, launch.PROJ_DX_TMA_DPHI, launch.PRB_G_BY_STRIDES)
    with stack_variants.kernel_switches("mhc_fused_lazy"):
        assert launch._PRB == stack_variants.LAZY_PRB[0] and fused.LAZY_RES_DX
    with stack_variants.kernel_switches("mhc_fused_bf16_linked_gather"):
        assert linked.LINK_MODE == "gather"
    with stack_variants.kernel_switches("mhc_fused_linked_copy_rcops"):
        assert linked.ADD_IN_PLACE is False
    with stack_variants.kernel_switches("mhc_fused_linked_savebc_rcops"):
        assert recompute.COPY_OPS == frozenset() and linked.ADD_IN_PLACE
    with stack_variants.kernel_switches("mhc_fused_linked_2mma"):
        assert launch.PROJ_FWD_MERGED is False
    with stack_variants.kernel_switches("mhc_fused_linked_ptr"):
        assert launch._PROJ_BWD_TMA is None
    with stack_variants.kernel_switches("mhc_fused_linked_acc"):
        assert launch.PROJ_DX_TMA_ACC is True
    with stack_variants.kernel_switches("mhc_fused_linked_mmasum"):
        assert launch.PROJ_DX_TMA_ACC is False
    with stack_variants.kernel_switches("mhc_fused_linked_dphi"):
        assert launch.PROJ_DX_TMA_DPHI == 1
    with stack_variants.kernel_switches("mhc_fused_linked_dphi2"):
        assert launch.PROJ_DX_TMA_DPHI == 2
    with stack_variants.kernel_switches("mhc_fused_linked_fnorm_gcopy"):
        assert launch.PRB_G_BY_STRIDES is False
    assert (launch._PRB, fused.LAZY_RES_DX, linked.LINK_MODE, linked.ADD_IN_PLACE, recompute.COPY_OPS,
            launch.PROJ_FWD_MERGED, launch.PROJ_DX_TMA_ACC, launch.PROJ_DX_TMA_DPHI,
            launch.PRB_G_BY_STRIDES) == before
    assert recompute.COPY_OPS  # the broadcast-copy rule is on by default


def test_launch_settings_sets_constants_and_rejects_bad_pairs(launch, monkeypatch):
    import pytest

    monkeypatch.setattr(launch, "PROJ_FWD_MERGED", launch.PROJ_FWD_MERGED)
    monkeypatch.setattr(launch, "_PROJ_BWD_GEMM", launch._PROJ_BWD_GEMM)
    got = stack_variants.launch_settings(["PROJ_FWD_MERGED=False", "_PROJ_BWD_GEMM=(32, 256, 256, 3, 4)"])
    assert got == {"PROJ_FWD_MERGED": False, "_PROJ_BWD_GEMM": (32, 256, 256, 3, 4)}
    assert launch.PROJ_FWD_MERGED is False and launch._PROJ_BWD_GEMM == (32, 256, 256, 3, 4)
    for bad in ["NOT_A_CONSTANT=1", "PROJ_FWD_MERGED", "PROJ_FWD_MERGED=maybe"]:
        with pytest.raises(SystemExit, match="--set"):
            stack_variants.launch_settings([bad])


def test_variant_settings_apply_to_their_variant_only(launch, monkeypatch):
    import pytest

    monkeypatch.setattr(stack_variants, "VARIANT_SETTINGS", {})
    tile = (64, 64, 1024, 3, 4)
    got = stack_variants.variant_settings([f"mhc_fused_linked_dphi:_PROJ_BWD_TMA={tile}"])
    assert got == {"mhc_fused_linked_dphi": {"_PROJ_BWD_TMA": tile}}
    default = launch._PROJ_BWD_TMA
    with stack_variants.kernel_switches("mhc_fused_linked_dphi"):
        assert launch._PROJ_BWD_TMA == tile and launch.PROJ_DX_TMA_DPHI == 1
    with stack_variants.kernel_switches("mhc_fused_linked"):
        assert launch._PROJ_BWD_TMA == default
    assert launch._PROJ_BWD_TMA == default
    for bad in ["mhc_fused_linked", ":PROJ_FWD_MERGED=False", "mhc_fused:NOPE=1"]:
        with pytest.raises(SystemExit):
            stack_variants.variant_settings([bad])


def test_sync_points_lists_each_synchronizing_call_once(monkeypatch):
    import warnings

    import torch

    modes = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)

    def step():
        for _ in range(3):  # the same call site three times: listed once
            warnings.warn("called a synchronizing CUDA operation")

    found = bench_mhc.sync_points(step)
    assert len(found) == 1 and "called a synchronizing CUDA operation" in found[0]
    assert modes == ["warn", "default"]  # the debug mode is switched back off
