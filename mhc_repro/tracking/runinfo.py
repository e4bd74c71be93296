"""What a training run records about itself: tags, flattened params, the config artifact, git commit,
the software and hardware it ran on."""

from __future__ import annotations

import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import yaml

from mhc_repro.tracking.store import PAPER_ID, repo_root

MAX_PARAM_CHARS = 6000  # MLflow 3 param value limit; the full config is also an artifact


def git_commit() -> str:
    """HEAD of the checkout, suffixed ``-dirty`` when tracked files are modified; ``unknown`` outside git."""
    try:
        root = repo_root()
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except Exception:
        return "unknown"


def environment() -> dict[str, str]:
    """The software and hardware of this process, as strings. ``aten_cpu_capability`` matters even on
    a GPU run's CPU side and decides CPU results: AVX-512 and AVX2 kernels round differently, so the
    same tiny CPU run ends at different losses on the two (reports/records/tiny-cpu/README.md);
    ``ATEN_CPU_CAPABILITY=avx2`` pins it."""
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__,
           "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "cpu": platform.processor() or platform.machine(), "host": platform.node(),
           "os": platform.platform(terse=True)}
    for name in ("lightning", "triton", "mlflow"):
        try:
            env[name] = __import__(name).__version__
        except Exception:  # absent or broken: say so rather than fail the run
            env[name] = "absent"
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        env["cuda_devices"] = f"{len(names)} x {names[0]}" if len(set(names)) == 1 else "; ".join(names)
        env["cuda"] = str(torch.version.cuda)
    else:
        env["cuda_devices"] = "none"
    return env


def record_environment(run_dir: Path, commit: str) -> dict[str, str]:
    """Append this launch's ``environment()`` (a resumed run may continue elsewhere) to
    ``<run_dir>/environment.jsonl``, one JSON line per launch; returns that environment."""
    env = environment()
    line = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_commit": commit, **env}
    with (Path(run_dir) / "environment.jsonl").open("a") as f:
        f.write(json.dumps(line) + "\n")
    return env


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> dotted keys (``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``); lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def train_tags(config: Mapping[str, Any], *, run_dir: str, commit: str,
               env: Mapping[str, str] | None = None) -> dict[str, str]:
    """DESIGN.md tags of a training run (``checkpoint_path`` is set later, after each save); ``env``
    (``environment()`` of the first launch) becomes the ``env.*`` tags."""
    train, tracking = config["train"], config["tracking"]
    tags = {
        "run_kind": "train",
        "variant": train["variant"],
        "preset": train["preset"],
        "seed": str(train["seed"]),
        "git_commit": commit,
        "paper": PAPER_ID,
        "run_dir": run_dir,
        "study": tracking["study"],
        **{f"env.{k}": v for k, v in (env or {}).items()},  # every launch's: environment.jsonl
    }
    if train["variant"] != "residual":
        tags["ablation"] = train["ablation"]
    tags.update({str(k): str(v) for k, v in (tracking.get("tags") or {}).items()})
    return tags


def log_config(client, run_id: str, config: Mapping[str, Any], params_total: int, params_active: int,
               kernels: Mapping[str, Any] | None = None) -> None:
    """Flattened resolved config + parameter counts (+ the fused kernels' switches as ``kernels.*``)
    as params, the full config as ``config/config.yaml``."""
    from mlflow.entities import Param

    flat = flatten(config)
    flat["model.params_total"] = params_total
    flat["model.params_active"] = params_active
    flat.update({f"kernels.{k}": v for k, v in (kernels or {}).items()})
    params = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in sorted(flat.items())]
    for i in range(0, len(params), 100):  # log_batch accepts at most 100 params per call
        client.log_batch(run_id, params=params[i:i + 100])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        client.log_artifact(run_id, str(path), artifact_path="config")
