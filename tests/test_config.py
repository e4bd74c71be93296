"""ModelConfig: nested round-trip, validation errors are one line and name the bad value."""

import json

import pytest

from mhc_repro.config import AttentionConfig, ModelConfig, MoEConfig
from mhc_repro.presets import get_preset, list_presets, with_variant


@pytest.mark.parametrize("name", list_presets())
def test_round_trip_every_preset(name):
    cfg = with_variant(get_preset(name), "mhc", collapse="mean")
    d = cfg.to_dict()
    json.dumps(d)  # plain data only
    back = ModelConfig.from_dict(d)
    assert back == cfg
    assert isinstance(back.attention, AttentionConfig) and isinstance(back.moe, MoEConfig)
    assert back.residual.kind == "mhc" and back.residual.collapse == "mean"
    assert back.to_dict() == d


def test_from_dict_partial_takes_defaults():
    cfg = ModelConfig.from_dict({"d_model": 64, "attention": {"n_heads": 2}})
    assert cfg.d_model == 64 and cfg.attention.n_heads == 2 and cfg.attention.head_dim == 32


@pytest.mark.parametrize(
    "change, words",
    [
        ({"d_model": 0}, ["d_model=0", "positive"]),
        ({"ffn": "relu"}, ["ffn='relu'", "dense", "moe"]),
        ({"norm_eps": -1.0}, ["norm_eps=-1.0"]),
        ({"attention": {"kind": "gqa"}}, ["attention.kind='gqa'", "mha", "mla"]),
        ({"attention": {"kind": "mla", "kv_lora_rank": 0, "rope_dim": 16}}, ["kv_lora_rank=0"]),
        ({"attention": {"n_heads": 4, "n_kv_heads": 3}}, ["n_kv_heads=3"]),
        ({"ffn": "moe", "moe": {"n_routed": 4, "n_active_routed": 6}}, ["n_active_routed=6", "n_routed=4"]),
        ({"ffn": "moe", "moe": {"score_func": "relu"}}, ["score_func='relu'", "sigmoid"]),
        ({"residual": {"kind": "dense"}}, ["residual.kind='dense'"]),
        ({"colour": 1}, ["colour", "allowed"]),
        ({"moe": {"experts": 3}}, ["experts", "allowed"]),
    ],
)
def test_bad_values_one_line_errors(change, words):
    with pytest.raises(ValueError) as err:
        ModelConfig.from_dict(change).validate()
    msg = str(err.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
