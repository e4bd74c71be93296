"""Where MLflow data lives (DESIGN.md "MLflow conventions").

Default: a sqlite store at ``<repo>/mlruns/mlflow.db`` with artifacts in ``<repo>/mlruns/artifacts``,
both absolute (MLflow 3.x refuses the plain file store, and relative paths resolve against the CWD).
``MLFLOW_TRACKING_URI`` overrides the store, e.g. an ``mlflow server`` for multi-node runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

PAPER_ID = "arXiv:2512.24880"


def repo_root() -> Path:
    """The checkout that holds this package (falls back to the CWD for a non-editable install)."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "pyproject.toml").exists() else Path.cwd().resolve()


def default_tracking_uri() -> str:
    """``sqlite:////<repo>/mlruns/mlflow.db`` (absolute path: four slashes)."""
    return f"sqlite:///{repo_root() / 'mlruns' / 'mlflow.db'}"


def resolve_tracking_uri(explicit: Optional[str] = None) -> str:
    """Explicit value (config) > ``MLFLOW_TRACKING_URI`` > the repo-local sqlite store."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return uri


def artifact_root(tracking_uri: str) -> Optional[str]:
    """Absolute artifact directory for sqlite stores (``<db dir>/artifacts``); None lets a server decide."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    root = Path(tracking_uri[len("sqlite:///"):]).parent / "artifacts"
    root.mkdir(parents=True, exist_ok=True)
    return str(root)


def get_or_create_experiment(client, name: str, tracking_uri: str) -> str:
    """Experiment id for ``name``; a new experiment gets an absolute artifact location."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    root = artifact_root(tracking_uri)
    location = None if root is None else str(Path(root) / name)
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # another process created it between our two calls
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id
