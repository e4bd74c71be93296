"""benchmarks/kernel_resources.py: every Triton kernel of the kernel table compiles ahead of time for
sm_90 on a machine without a GPU, and its resources come back (registers, shared memory, blocks/SM).
Run in a fresh process: the kernel tests' conftest switches the kernels to the CPU interpreter."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


@pytest.mark.slow
def test_every_kernel_compiles_for_sm90(tmp_path):
    out = tmp_path / "res.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "kernel_resources.py"), "--C", "256",
                           "--tokens", "64", "--json", str(out), "--dump-ptx", str(tmp_path / "ptx")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    kernels = {r["kernel"] for r in rows}
    assert {"proj_fwd", "coef_fwd", "coef_bwd", "proj_bwd", "pre_fwd", "pre_bwd", "post_res_fwd", "phi_split",
            "post_res_bwd_mma"} <= kernels
    # each table row holds the kernels it launches (a miscount of launches per row shifts these)
    by_row = {}
    for r in rows:
        by_row.setdefault(r["row"], []).append(r["kernel"])
    assert by_row["pre"] == ["pre_fwd"] and by_row["post_res_bwd"] == ["post_res_bwd_mma"]
    assert by_row["coefficients [bf16x2] (proj+sumsq, epilogue)"] == ["phi_split", "proj_fwd", "coef_fwd"]
    assert by_row["coef_bwd (Sinkhorn bwd recomputed)"] == ["coef_bwd", "sum_rows"]
    tma = [row for row, ks in by_row.items() if ks == ["proj_dx_tma"]]
    # 2 precisions x 2 links x (2 orders + the loop pipelined with 2 and 3 stages + dφ in the pass, plain
    # loop and 3 stages)
    assert len(tma) == 24
    # the TMA rows say how many shared-memory copies of a stream tile the pipeliner made (>= 1)
    assert all(r["tile_buffers"] >= 1 for r in rows if r["kernel"] == "proj_dx_tma")
    ptx = {p.name: p.read_text() for p in (tmp_path / "ptx").iterdir()}
    assert "TMA_dx_pass_linked_add_bf16x2_ACC_proj_dx_tma.ptx" in ptx
    assert len(ptx) == len({(r["row"], r["kernel"]) for r in rows})
    assert all(".entry" in text for text in ptx.values())
    assert {"TMA dx pass linked add [bf16x2] ACC", "TMA dx pass linked add [bf16x2] ACC loop2",
            "TMA dx pass linked add [bf16x2] ACC loop2 dphi2"} <= set(tma)
    for r in rows:
        assert 0 < r["regs"] <= 255 and 1 <= r["blocks_per_sm"] <= 32, r
        assert r["blocks_per_sm"] * r["warps"] <= 64 and r["limit"] in ("registers", "shared memory", "warps")
