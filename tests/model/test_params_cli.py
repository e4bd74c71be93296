"""`mhc-repro params`: text and JSON output, errors as one line."""

import json
import subprocess
import sys
from pathlib import Path

from mhc_repro.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_params_json_3b(capsys):
    assert main(["params", "--preset", "3b", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["preset"] == "3b" and d["variant"] == "residual" and d["n_streams"] == 1
    assert abs(d["total"] / 2.97e9 - 1) < 0.01 and abs(d["active"] / 612e6 - 1) < 0.01
    assert d["embedding"] == d["head"] == 129280 * 1280


def test_params_text_mhc(capsys):
    assert main(["params", "--preset", "tiny-moe", "--variant", "mhc"]) == 0
    out = capsys.readouterr().out
    assert "variant mhc" in out and "(n = 4)" in out and "active" in out and "moe_routed" in out


def test_params_bad_preset_one_line(capsys):
    assert main(["params", "--preset", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown preset 'nope'" in err and "27b" in err


def test_params_subprocess_json():
    env = {"PYTHONPATH": str(ROOT), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "mhc_repro.cli", "params", "--preset", "9b", "--variant", "hc",
                          "--json"], capture_output=True, text=True, env=env, cwd=ROOT, check=True).stdout
    d = json.loads(out)
    assert d["variant"] == "hc" and d["residual"] > 0 and abs(d["total"] / 9.18e9 - 1) < 0.01
