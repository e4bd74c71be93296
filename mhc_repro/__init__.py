"""mhc-repro: reproduction suite for Manifold-Constrained Hyper-Connections (arXiv 2512.24880)."""

__version__ = "0.1.0"
PAPER_ID = "arXiv:2512.24880"
