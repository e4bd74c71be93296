"""Lightning's MLFlowLogger, made safe for resumed runs.

After ``kill -9`` the run resumes from the last checkpoint at step k, but MLflow may already hold
metrics for steps k+1..k+j (logged before the kill). MLflow cannot delete metric points, so on resume
we read, per key, the highest step already stored and drop re-logged points at or below it: the
history stays gap-free and has each step once (the replayed steps recompute the same values).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from lightning.pytorch.loggers import MLFlowLogger
from lightning.pytorch.utilities import rank_zero_only


class ResumableMLFlowLogger(MLFlowLogger):
    """MLFlowLogger with per-key high-water marks; hyperparameters are logged by the run, not here."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("log_model", False)  # checkpoints can be tens of GB: path goes in a tag instead
        super().__init__(*args, **kwargs)
        self._high_water: dict[str, int] = {}

    @rank_zero_only
    def load_high_water(self) -> dict[str, int]:
        """Highest stored step per metric key of this run (call once before training resumes)."""
        client, run_id = self.experiment, self.run_id
        self._high_water = {}
        for key in client.get_run(run_id).data.metrics:
            history = client.get_metric_history(run_id, key)
            if history:
                self._high_water[key] = max(m.step for m in history)
        return dict(self._high_water)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        if step is not None and self._high_water:
            metrics = {k: v for k, v in metrics.items() if step > self._high_water.get(k, -1)}
            if not metrics:
                return
        super().log_metrics(metrics, step)

    def log_hyperparams(self, params: Any) -> None:  # noqa: D401 - params come from mhc_repro.tracking
        """No-op: the resolved config is logged once, flattened, by ``runinfo.log_config``."""

    @rank_zero_only
    def set_tag(self, key: str, value: str) -> None:
        self.experiment.set_tag(self.run_id, key, value)

    @rank_zero_only
    def log_artifact(self, local_path: str, artifact_path: Optional[str] = None) -> None:
        self.experiment.log_artifact(self.run_id, local_path, artifact_path=artifact_path)
