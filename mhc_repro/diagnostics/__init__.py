"""Training diagnostics (framework-free)."""

from .amax import amax_gains, backward_gain, forward_gain, log_colsum, plot_amax

__all__ = ["amax_gains", "forward_gain", "backward_gain", "log_colsum", "plot_amax"]
