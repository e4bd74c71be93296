"""MLflow helpers: store location, run tags/params/config artifact, a resume-safe Lightning logger."""

from mhc_repro.tracking.store import PAPER_ID, default_tracking_uri, resolve_tracking_uri, repo_root

__all__ = ["PAPER_ID", "default_tracking_uri", "resolve_tracking_uri", "repo_root"]
