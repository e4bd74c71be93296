"""What every GPU benchmark script does before and after its timing: refuse to start without a CUDA
device (one line, not a traceback from deep inside torch.cuda), refuse an --out that already exists
(nothing already written is overwritten), and write its JSON atomically (a temporary file beside
it, then os.replace: a run killed mid-write leaves the previous complete record, never half a file)."""

from __future__ import annotations

import json
import os


def require_cuda(script: str) -> None:
    """SystemExit with one line when torch sees no CUDA device (the benchmarks time GPU steps)."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(f"{script}: needs a CUDA GPU (torch.cuda.is_available() is False); nothing was run. "
                         "On CPU: pytest tests/benchmarks (the scripts' CPU tests)")


def claim_out(ap, path: str | None, flag: str = "--out") -> None:
    """``ap.error`` when ``path`` already exists: a new record never replaces an earlier one silently."""
    if path and os.path.exists(path):
        ap.error(f"{flag} {path} already exists; nothing already written is overwritten: "
                 "choose another path or move that file away")


def write_json(path: str, obj, **kw) -> None:
    """``obj`` as JSON at ``path``, atomically (``path``.tmp, then os.replace); folders made as needed."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=kw.pop("indent", 1), **kw)
    os.replace(tmp, path)
