"""benchmarks/train_parity.py end to end on CPU (kernels through the Triton interpreter): both curves
come back, start equal (same init, same batch), and --set reaches the kernel launch constants."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


@pytest.mark.slow
def test_train_parity_runs_and_records_launch_settings(tmp_path):
    out = tmp_path / "tp.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "train_parity.py"), "--steps", "3",
                           "--set", "PROJ_DX_TMA_ACC=False", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["launch"] == {"PROJ_DX_TMA_ACC": False}
    ref, fused = res["curves"]["fp32/reference"], res["curves"]["fp32/triton"]
    assert len(ref) == len(fused) == 3 and abs(ref[0] - fused[0]) < 1e-5
    bad = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "train_parity.py"), "--steps", "1",
                          "--set", "NO_SUCH=1"], capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode != 0 and "NO_SUCH=1" in bad.stderr
