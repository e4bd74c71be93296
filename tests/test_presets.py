"""Presets: Table 5 parameter counts (within 1%), registry errors, variant switching."""

import pytest

from mhc_repro.model.params import count_params
from mhc_repro.presets import get_preset, list_presets, with_variant

# PAPER.md §3 Table 5: total / active params, vocab params (embedding + head, untied)
TABLE5 = {"3b": (2.97e9, 612e6, 331e6), "9b": (9.18e9, 1.66e9, 496e6), "27b": (27.0e9, 4.14e9, 662e6),
          "3b-1t": (2.97e9, 612e6, 331e6)}


@pytest.mark.parametrize("name", list(TABLE5))
def test_table5_counts_within_1_percent(name):
    total, active, vocab = TABLE5[name]
    c = count_params(get_preset(name))
    assert abs(c["total"] / total - 1) < 0.01, c
    assert abs(c["active"] / active - 1) < 0.01, c
    assert abs((c["embedding"] + c["head"]) / vocab - 1) < 0.01, c


def test_table5_architecture_facts():
    cfg = get_preset("27b")
    assert (cfg.vocab_size, cfg.d_model, cfg.n_blocks, cfg.max_seq_len) == (129280, 2560, 30, 4096)
    assert cfg.norm_eps == 1e-20 and cfg.attention.kind == "mla" and cfg.attention.kv_lora_rank == 512
    assert (cfg.attention.rope_dim, cfg.attention.rope_theta) == (64, 10000.0)
    assert (cfg.moe.n_routed, cfg.moe.n_active_routed, cfg.moe.n_shared, cfg.moe.n_dense_blocks) == (72, 6, 2, 1)
    assert get_preset("3b-1t") == get_preset("3b")


def test_variants_add_few_params():
    base = count_params(get_preset("3b"))["total"]
    for kind in ("hc", "mhc"):
        c = count_params(with_variant(get_preset("3b"), kind))
        assert 0 < c["total"] - base < 0.01 * base
        assert c["residual"] > 0


def test_unknown_names_one_line():
    with pytest.raises(ValueError, match=r"unknown preset 'huge'; allowed: tiny, tiny-moe, small"):
        get_preset("huge")
    with pytest.raises(ValueError, match="unknown residual variant 'xx'"):
        with_variant(get_preset("tiny"), "xx")
    with pytest.raises(ValueError, match="unknown residual option"):
        with_variant(get_preset("tiny"), "mhc", streams=3)


def test_with_variant_copies_and_restores_streams():
    tiny = get_preset("tiny")
    m = with_variant(tiny, "mhc")
    assert tiny.residual.kind == "residual" and m.residual.kind == "mhc" and m.residual.num_streams == 4
    assert with_variant(tiny, "hc", n=2).residual.num_streams == 2
    assert with_variant(m, "residual").residual.num_streams == 1
    assert get_preset("tiny") is not get_preset("tiny")
    assert set(list_presets()) >= {"tiny", "tiny-moe", "small", "3b", "9b", "27b", "3b-1t"}
