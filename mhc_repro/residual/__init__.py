"""Framework-free residual variants: Pre-Norm, HC, mHC (see docs/DESIGN.md)."""

from .base import (StreamCollapse, StreamResidual, build_residual, capture_h_res, expand_streams,
                   no_weight_decay)
from .config import ResidualConfig

__all__ = ["ResidualConfig", "StreamResidual", "StreamCollapse", "build_residual", "capture_h_res",
           "expand_streams", "no_weight_decay"]
