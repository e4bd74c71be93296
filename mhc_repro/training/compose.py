"""Build a RunConfig from YAML files and overrides.

Composition, later wins:
  1. each ``--config`` file in order; a file may ``include:`` other files (paths relative to it),
     which are merged *before* the including file's own keys;
  2. ``--variant`` / ``--set key.sub=value`` overrides (value parsed as YAML: ``1e-3``, ``true``, ``[1, 2]``);
  3. environment: MHC_NUM_NODES -> train.num_nodes, MHC_GPUS_PER_NODE -> train.devices,
     MHC_DATA -> data.source, MHC_OUT_DIR -> train.out_dir (for cluster job scripts).
The ``model`` mapping holds overrides applied on top of ``train.preset``'s ModelConfig; the variant and
ablation then set ``model.residual.kind`` and its Table 1 switches.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Iterable, Optional

import yaml

from mhc_repro.config import ModelConfig
from mhc_repro.data.config import DataConfig
from mhc_repro.training.config import ABLATIONS, RunConfig, TrackingConfig, TrainConfig, _from_dict

TOP_KEYS = ("model", "train", "data", "tracking")
ENV_OVERRIDES = {"MHC_NUM_NODES": "train.num_nodes", "MHC_GPUS_PER_NODE": "train.devices",
                 "MHC_DATA": "data.source", "MHC_OUT_DIR": "train.out_dir"}
ENV_LITERAL = ("MHC_DATA", "MHC_OUT_DIR")  # strings as written, not parsed as YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats without a dot (``1e-3``, ``3E5``) as numbers: PyYAML
    follows YAML 1.1, where ``lr: 1e-3`` in a config file is the *string* '1e-3'."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_yaml(text: str):
    """``yaml.safe_load`` with YAML 1.2 floats (``1e-3`` is a number), for config files and ``--set`` values."""
    return yaml.load(text, Loader=_Loader)


def deep_merge(base: dict, over: dict) -> dict:
    """Recursive dict merge; mappings merge key by key, everything else is replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_yaml(path: str | Path, _seen: Optional[tuple] = None) -> dict:
    """One config file with its ``include:`` chain resolved (cycles are an error)."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    seen = (_seen or ()) + (path,)
    try:
        doc = parse_yaml(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"config file {str(path)!r} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping, got {type(doc).__name__}")
    includes = doc.pop("include", None) or []
    merged: dict = {}
    for inc in [includes] if isinstance(includes, str) else includes:
        inc_path = (path.parent / inc).resolve()
        if inc_path in seen:
            raise ValueError(f"config file {str(path)!r} includes {inc!r} in a cycle")
        merged = deep_merge(merged, load_yaml(inc_path, seen))
    unknown = sorted(set(doc) - set(TOP_KEYS))
    if unknown:
        raise ValueError(f"config file {str(path)!r}: unknown top-level key(s) {unknown}; "
                         f"allowed: {', '.join(TOP_KEYS)}, include")
    return deep_merge(merged, doc)


def apply_override(doc: dict, assignment: str) -> dict:
    """``"train.lr=1e-3"`` -> doc with that key set (YAML-parsed value)."""
    if "=" not in assignment:
        raise ValueError(f"override {assignment!r} is malformed; expected key.sub=value (e.g. train.lr=1e-3)")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if parts[0] not in TOP_KEYS or len(parts) < 2 or not all(parts):
        raise ValueError(f"override key {key!r} is invalid; it must start with one of {', '.join(TOP_KEYS)} "
                         "and name a field (e.g. train.lr)")
    value = parse_yaml(raw) if raw.strip() else None  # the config files' parser: 1e-3 is a number
    out = copy.deepcopy(doc)
    node = out
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ValueError(f"override key {key!r}: {p!r} is not a mapping")
    node[parts[-1]] = value
    return out


def resolve_model(preset: str, variant: str, ablation: str, overrides: dict) -> ModelConfig:
    """Preset ModelConfig + ``model`` overrides, then the variant (residual kind) and ablation switches."""
    from mhc_repro.presets import get_preset, with_variant

    base = get_preset(preset).to_dict()
    overrides = copy.deepcopy(overrides or {})
    res_over = dict(overrides.pop("residual", None) or {})
    cfg = ModelConfig.from_dict(deep_merge(base, overrides))
    # train.variant decides the kind and train.ablation the Table 1 switches: a model.residual value that
    # disagrees would be dropped silently (and the run named after the variant/ablation), so it is an
    # error; an equal value (as in a resolved config.yaml) is fine.
    kind = res_over.pop("kind", variant)
    if kind != variant:
        raise ValueError(f"model.residual.kind={kind!r} conflicts with train.variant={variant!r}; "
                         "set the variant with train.variant (or --variant) only")
    if variant == "residual":
        res_over.pop("n", None)
        # the Pre-Norm baseline has no H maps: a switch turned off would be logged but change nothing
        off = [name for name in ("use_h_res", "use_h_pre", "use_h_post") if res_over.get(name, True) is not True]
        if off:
            raise ValueError(f"model.residual.{off[0]}={res_over[off[0]]!r} has no effect on train.variant='residual' "
                             "(the Pre-Norm baseline has no H maps); Table 1 ablations need variant hc or mhc")
    else:
        for name, on in zip(("use_h_res", "use_h_pre", "use_h_post"), ABLATIONS[ablation]):
            if res_over.get(name, on) != on:
                raise ValueError(f"model.residual.{name}={res_over[name]!r} conflicts with train.ablation="
                                 f"{ablation!r}; choose the Table 1 switches with train.ablation "
                                 f"({', '.join(ABLATIONS)}) only")
            res_over[name] = on
    return with_variant(cfg, variant, **res_over)


def build_config(configs: Iterable[str | Path] = (), overrides: Iterable[str] = (),
                 variant: Optional[str] = None, env: Optional[dict] = None) -> RunConfig:
    """Compose and validate. Raises ValueError/FileNotFoundError with a one-line message."""
    doc: dict = {}
    for path in configs:
        doc = deep_merge(doc, load_yaml(path))
    env = os.environ if env is None else env
    for var, key in ENV_OVERRIDES.items():
        if env.get(var):
            if var in ENV_LITERAL:  # a path or dataset name, taken as written (MHC_DATA=2024 is a directory)
                section, name = key.split(".")
                doc = deep_merge(doc, {section: {name: env[var]}})
            else:
                doc = apply_override(doc, f"{key}={env[var]}")
    if variant is not None:
        doc = apply_override(doc, f"train.variant={variant}")
    for assignment in overrides:
        doc = apply_override(doc, assignment)
    return config_from_dict(doc)


def config_from_dict(doc: dict) -> RunConfig:
    """A (partial) config mapping -> validated RunConfig. Resolved configs map to themselves."""
    unknown = sorted(set(doc) - set(TOP_KEYS))
    if unknown:
        raise ValueError(f"config: unknown top-level key(s) {unknown}; allowed: {', '.join(TOP_KEYS)}")
    train = _from_dict(TrainConfig, doc.get("train") or {}, "train").validate()
    data = DataConfig.from_dict(doc.get("data") or {})
    tracking = _from_dict(TrackingConfig, doc.get("tracking") or {}, "tracking")
    model = resolve_model(train.preset, train.variant, train.ablation, doc.get("model") or {})
    return RunConfig(model=model, train=train, data=data, tracking=tracking).validate()


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


__all__ = ["build_config", "config_from_dict", "load_yaml", "apply_override", "deep_merge", "dump_config",
           "resolve_model"]
