"""benchmarks/train_parity.py end to end on CPU (kernels through the Triton interpreter): both curves
come back, start equal (same init, same batch), and --set reaches the kernel launch constants."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")


def _refused(monkeypatch, *argv) -> str:
    """train_parity.main in this process on a command line it must refuse before training (a process of
    its own costs ~3 s of imports): the message it exits with."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import train_parity

    monkeypatch.setattr(sys, "argv", ["train_parity.py", *argv])
    with pytest.raises(SystemExit) as e:
        train_parity.main()
    assert e.value.code not in (0, None)
    return str(e.value.code)


@pytest.mark.slow
def test_train_parity_runs_and_records_launch_settings(tmp_path, monkeypatch):
    out = tmp_path / "tp.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    # 2 steps of a 1-block model: the script's plumbing (the kernels' multi-step numerics on this very
    # model, 2 blocks, are tests/model/test_golden_loss.py's fused curve)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "train_parity.py"), "--steps", "2",
                           "--blocks", "1", "--set", "PROJ_DX_TMA_ACC=False", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["launch"] == {"PROJ_DX_TMA_ACC": False}
    ref, fused = res["curves"]["fp32/reference"], res["curves"]["fp32/triton"]
    assert len(ref) == len(fused) == 2 and abs(ref[0] - fused[0]) < 1e-5
    assert "NO_SUCH=1" in _refused(monkeypatch, "--steps", "1", "--set", "NO_SUCH=1")


@pytest.mark.slow
def test_perturbed_reference_gives_a_chaos_gap(tmp_path, monkeypatch):
    """--perturb-init trains the reference again from scaled initial weights: a curve that starts apart
    from the reference's, and a 'chaos' gap beside the others; --backends reference skips the kernels."""
    out = tmp_path / "chaos.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "train_parity.py"), "--steps", "4",
                           "--backends", "reference", "--perturb-init", "0.01", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert set(res["curves"]) == {"fp32/reference", "fp32/reference-perturbed"}
    ref, pert = res["curves"]["fp32/reference"], res["curves"]["fp32/reference-perturbed"]
    assert ref[0] != pert[0]
    chaos = res["gaps"]["chaos: fp32/reference-perturbed vs fp32/reference"]
    assert chaos["max"] == max(abs(a - b) for a, b in zip(ref, pert)) > 0
    assert chaos["mean_first_half"] == pytest.approx((abs(ref[0] - pert[0]) + abs(ref[1] - pert[1])) / 2)
    assert "--perturb-init -1.0" in _refused(monkeypatch, "--steps", "1", "--perturb-init", "-1")
