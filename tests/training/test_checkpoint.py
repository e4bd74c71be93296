"""training.checkpoint: what load_lm accepts and how it refuses the rest (one-line errors)."""
import pytest
import torch

from mhc_repro.training.checkpoint import load_checkpoint_dict, load_lm, resolve_checkpoint


def test_resolve_checkpoint_refuses_what_is_neither(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a run directory"):
        resolve_checkpoint(tmp_path / "nothing")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no checkpoints/step"):
        resolve_checkpoint(tmp_path / "run")


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b""])
def test_unreadable_checkpoint_file_is_one_clear_error(tmp_path, content):
    bad = tmp_path / "step0000001.ckpt"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=r"step0000001\.ckpt.*cannot be read") as info:
        load_lm(bad)
    assert "\n" not in str(info.value)


def test_torch_file_without_config_is_refused(tmp_path):
    ckpt = tmp_path / "x.ckpt"
    torch.save({"state_dict": {}}, ckpt)
    assert load_checkpoint_dict(ckpt) == {"state_dict": {}}
    with pytest.raises(ValueError, match="not an mhc-repro checkpoint"):
        load_lm(ckpt)
