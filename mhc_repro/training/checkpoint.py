"""Checkpoints -> models, without Lightning (DESIGN.md: training -> evaluation contract).

``load_lm(path)`` accepts a run directory (its newest checkpoint is used) or a ``.ckpt`` (a file, or the
directory of shards that FSDP2 runs write, consolidated in memory) and
returns ``(LM, ModelConfig, tokenizers.Tokenizer)``. The model config comes from the checkpoint's
``hyper_parameters["config"]["model"]``; the tokenizer from ``tokenizer.json`` in the run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch

from mhc_repro.config import ModelConfig
from mhc_repro.model.transformer import LM
from mhc_repro.training.callbacks import latest_checkpoint

PREFIX = "model."


def resolve_checkpoint(path: Union[str, Path]) -> tuple[Path, Path]:
    """(checkpoint file, run directory) for a run directory or a checkpoint path."""
    p = Path(path).expanduser().resolve()
    if p.is_dir() and (p / "checkpoints").is_dir():
        ckpt = latest_checkpoint(p / "checkpoints")
        if ckpt is None:
            raise FileNotFoundError(f"run directory {str(p)!r} has no checkpoints/step*.ckpt yet")
        return ckpt, p
    if p.exists() and p.suffix == ".ckpt":
        run_dir = p.parent.parent if p.parent.name == "checkpoints" else p.parent
        return p, run_dir
    raise FileNotFoundError(f"{str(p)!r} is neither a run directory (with checkpoints/) nor a .ckpt file")


def load_checkpoint_dict(ckpt: Path, *, optimizer: bool = False) -> dict:
    """The checkpoint as one dict on CPU. A sharded FSDP2 checkpoint (a ``step*.ckpt`` directory of
    torch.distributed.checkpoint shards plus Lightning's ``meta.pt``) is consolidated in memory without a
    process group: full ``state_dict`` (keys prefixed ``model.``) and, if asked, ``optimizer_0``."""
    # our checkpoints hold only tensors and plain containers (the config is a dict), so weights_only works
    if not ckpt.is_dir():
        try:
            return torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as err:  # truncated, foreign or not a torch file at all
            raise ValueError(f"checkpoint {str(ckpt)!r} cannot be read ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else 'no detail'}); "
                             "is it a complete mhc-repro checkpoint?") from err
    meta = ckpt / "meta.pt"
    if not meta.is_file():
        raise FileNotFoundError(f"sharded checkpoint {str(ckpt)!r} has no meta.pt (incomplete save?)")
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict  # as Lightning's consolidation

    state: dict = {}
    keys = {"state_dict", "optimizer_0"} if optimizer else {"state_dict"}
    # the public dcp.load fills a copy of the (empty) dict it is given; the private loader fills ours
    _load_state_dict(state, storage_reader=FileSystemReader(str(ckpt)),
                     planner=_EmptyStateDictLoadPlanner(keys=keys), no_dist=True)
    state.update(torch.load(meta, map_location="cpu", weights_only=True))
    return state


def load_lm(path: Union[str, Path], device: Union[str, torch.device] = "cpu",
            tokenizer_path: Optional[Union[str, Path]] = None):
    """(LM in eval mode, ModelConfig, tokenizers.Tokenizer or None if the run has no tokenizer.json)."""
    ckpt, run_dir = resolve_checkpoint(path)
    state = load_checkpoint_dict(ckpt)
    try:
        config = state["hyper_parameters"]["config"]
    except KeyError:
        raise ValueError(f"checkpoint {str(ckpt)!r} has no hyper_parameters['config']; not an mhc-repro checkpoint") from None
    cfg = ModelConfig.from_dict(config["model"])
    model = LM(cfg)
    weights = {k[len(PREFIX):]: v for k, v in state["state_dict"].items() if k.startswith(PREFIX)}
    model.load_state_dict(weights)
    model.to(device).eval()
    tok = None
    tok_file = Path(tokenizer_path) if tokenizer_path else run_dir / "tokenizer.json"
    if tok_file.exists():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tok_file))
    return model, cfg, tok
