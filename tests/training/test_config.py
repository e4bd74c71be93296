"""Config composition, overrides and the one-line errors for bad values (all before any training)."""
import pytest

from mhc_repro.cli import main as cli_main
from mhc_repro.training.compose import apply_override, build_config, config_from_dict
from mhc_repro.training.config import RunConfig
from mhc_repro.training.module import flops_per_token, lr_factor
from mhc_repro.training.run import check_writable


def test_include_merge_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("train: {preset: tiny, lr: 0.002, max_steps: 10}\ndata: {seq_len: 64}\n")
    (tmp_path / "hc.yaml").write_text("include: base.yaml\ntrain: {variant: hc}\nmodel: {residual: {n: 2}}\n")
    cfg = build_config([tmp_path / "hc.yaml"], ["train.lr=1e-3", "train.ablation=res+pre"], env={})
    assert (cfg.train.lr, cfg.train.max_steps, cfg.data.seq_len) == (1e-3, 10, 64)
    r = cfg.model.residual
    assert (r.kind, r.n, r.use_h_res, r.use_h_pre, r.use_h_post) == ("hc", 2, True, True, False)
    assert cfg.run_name == "hc-res+pre-s0"
    # --variant wins over the file; the residual baseline forces n = 1
    assert build_config([tmp_path / "hc.yaml"], variant="residual", env={}).model.residual.n == 1
    # later --config files override earlier ones; env vars feed cluster settings
    (tmp_path / "over.yaml").write_text("train: {max_steps: 3}\n")
    cfg2 = build_config([tmp_path / "hc.yaml", tmp_path / "over.yaml"], env={"MHC_NUM_NODES": "4"})
    assert (cfg2.train.max_steps, cfg2.train.num_nodes) == (3, 4)


def test_resolved_config_round_trips():
    cfg = build_config([], ["train.variant=mhc", "train.ablation=res"], env={})
    d = cfg.to_dict()
    assert set(d) == {"model", "train", "data", "tracking"}
    assert config_from_dict(d).to_dict() == d
    assert RunConfig.from_resolved(d).to_dict() == d


@pytest.mark.parametrize("override,match", [
    ("train.preset=huge", r"train.preset='huge' is unknown; allowed: tiny"),
    ("train.variant=resnet", r"train.variant='resnet' is unknown; allowed: residual, hc, mhc"),
    ("model.residual.n=0", r"residual.n=0 is invalid"),
    ("data.source=/no/such/dir", r"path '/no/such/dir' does not exist"),
    ("train.max_steps=0", r"train.max_steps=0 is invalid"),
    ("train.lr=-1", r"train.lr=-1 is invalid"),
    ("train.ablation=res", r"needs variant hc or mhc"),
    ("train.bogus=1", r"train: unknown key\(s\) \['bogus'\]"),
    ("data.seq_len=4096", r"data.seq_len=4096 exceeds model.max_seq_len=256"),
    ("lr=1", r"override key 'lr' is invalid"),
])
def test_bad_values_fail_with_one_line(override, match):
    over = [override] if override != "train.ablation=res" else ["train.variant=residual", override]
    with pytest.raises(ValueError, match=match) as e:
        build_config([], over, env={})
    assert "\n" not in str(e.value)


def test_unwritable_out_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=r"train.out_dir='.*file/runs' is not writable"):
        check_writable(str(blocker / "runs"))


def test_cli_reports_bad_config_in_one_line(capsys, tmp_path):
    assert cli_main(["train", "--set", "train.preset=huge"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.preset='huge' is unknown" in err
    assert cli_main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_schedule_and_flops():
    f = [lr_factor(s, 10, 100, [0.8, 0.9], [0.316, 0.1]) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == 1.0 and f[79] == 1.0
    assert f[80] == 0.316 and f[89] == 0.316 and f[90] == 0.1 and f[99] == 0.1
    cfg = build_config([], ["train.preset=3b"], env={}).model
    fpt = flops_per_token(cfg, 612_000_000, 4096)
    # 6 N_active + 6 * 12 blocks * 16 heads * (192 + 128) * 4096
    assert fpt == 6 * 612_000_000 + 6 * 12 * 16 * 320 * 4096


def test_yaml_files_read_floats_without_a_dot(tmp_path):
    # PyYAML (YAML 1.1) reads `lr: 1e-3` as the string '1e-3'; config files must get the number
    (tmp_path / "c.yaml").write_text("train: {lr: 1e-3, eps: 1E-20, lr_factors: [3e-1, 1e-1]}\n"
                                     "model: {norm_eps: 1e-5}\n")
    cfg = build_config([tmp_path / "c.yaml"], ["train.weight_decay=1e-2"], env={})
    assert (cfg.train.lr, cfg.train.eps, cfg.train.lr_factors) == (1e-3, 1e-20, [0.3, 0.1])
    assert (cfg.model.norm_eps, cfg.train.weight_decay) == (1e-5, 1e-2)
    assert apply_override({}, "train.lr=1e-3.5")["train"]["lr"] == "1e-3.5"  # not a number: stays a string


@pytest.mark.parametrize("override,match", [
    ("train.betas=0.9", r"train.betas=0.9 is invalid"),
    ("train.lr_milestones=0.8", r"train.lr_milestones=0.8 is invalid"),
    ("train.lr_factors=[a, b]", r"train.lr_factors=\['a', 'b'\] is invalid"),
    ("train.compile=maybe", r"train.compile='maybe' is invalid"),
    ("train.out_dir=5", r"train.out_dir=5 is invalid"),
    ("data.seed=abc", r"data.seed must be an integer >= 0, got 'abc'"),
    ("data.val_fraction=abc", r"data.val_fraction must be in \[0, 1\) \(a number\), got .abc."),
    ("data.num_workers=x", r"data.num_workers must be an integer >= 0"),
    ("data.val_batch_size=abc", r"data.val_batch_size must be a positive integer"),
    ("data.val_docs=foo", r"data.val_docs='foo' is invalid"),
    ("data.source=2024", r"data.source=2024 is invalid; it must be null or a string"),
    ("tracking.tags=foo", r"tracking.tags='foo' is invalid"),
    ("tracking.tags={variant: x, team: y}", r"tracking.tags names \['variant'\], which the runs set themselves"),
    ("tracking.tags={mlflow.runName: x}", r"tracking.tags names \['mlflow.runName'\]"),
    ("tracking.tags={env.torch: x}", r"tracking.tags names \['env.torch'\]"),
    ("tracking.enabled=maybe", r"tracking.enabled='maybe' is invalid"),
    ("model.norm_eps=abc", r"norm_eps='abc'; must be a number > 0"),
    ("model.init_std=abc", r"init_std='abc'; must be a number > 0"),
    ("model.attention.rope_theta=abc", r"attention.rope_theta='abc'; must be a number > 0"),
])
def test_wrong_types_fail_with_one_line(override, match):
    """A value of the wrong type is a one-line ValueError (the CLI's exit 2), not a TypeError traceback."""
    with pytest.raises(ValueError, match=match) as e:
        build_config([], [override], env={})
    assert "\n" not in str(e.value)


def test_residual_kind_and_switches_conflicting_with_variant_or_ablation_are_errors():
    # they used to be dropped silently: the run trained the full mHC under the user's nose
    with pytest.raises(ValueError, match=r"model.residual.kind='hc' conflicts with train.variant='mhc'"):
        build_config([], ["train.variant=mhc", "model.residual.kind=hc"], env={})
    with pytest.raises(ValueError, match=r"model.residual.use_h_post=False conflicts with train.ablation='full'"):
        build_config([], ["train.variant=mhc", "model.residual.use_h_post=false"], env={})
    # agreeing values are fine (a resolved config.yaml carries them)
    cfg = build_config([], ["train.variant=hc", "train.ablation=res+pre", "model.residual.use_h_post=false",
                            "model.residual.kind=hc"], env={})
    assert (cfg.model.residual.kind, cfg.model.residual.use_h_post) == ("hc", False)


def test_sinkhorn_shift_from_yaml_and_set(tmp_path):
    assert build_config([], [], env={}).model.residual.sinkhorn_shift is False  # PAPER.md's literal exp
    (tmp_path / "c.yaml").write_text("model: {residual: {sinkhorn_shift: true}}\n")
    assert build_config([tmp_path / "c.yaml"], env={}).model.residual.sinkhorn_shift is True
    cfg = build_config([tmp_path / "c.yaml"], ["model.residual.sinkhorn_shift=false"], env={})
    assert cfg.model.residual.sinkhorn_shift is False
    cfg = build_config([], ["model.residual.sinkhorn_shift=true"], env={})
    assert cfg.model.residual.sinkhorn_shift is True
    from mhc_repro.tracking.runinfo import flatten

    assert flatten(cfg.to_dict())["model.residual.sinkhorn_shift"] is True  # logged with the run params
    with pytest.raises(ValueError, match=r"residual.sinkhorn_shift='maybe' is invalid; it must be true or false") as e:
        build_config([], ["model.residual.sinkhorn_shift=maybe"], env={})
    assert "\n" not in str(e.value)


def test_env_paths_are_taken_literally(tmp_path, monkeypatch):
    # MHC_DATA=2024 is the directory ./2024, not the integer 2024; MHC_OUT_DIR=null a directory "null"
    (tmp_path / "2024").mkdir()
    (tmp_path / "2024" / "a.txt").write_text("some text")
    monkeypatch.chdir(tmp_path)
    cfg = build_config([], [], env={"MHC_DATA": "2024", "MHC_OUT_DIR": "null"})
    assert cfg.data.source == "2024" and cfg.train.out_dir == "null"


def test_print_config_of_a_study_is_one_yaml_document_per_run(capsys):
    import yaml

    assert cli_main(["train", "--variants", "residual", "mhc", "--print-config"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["train"]["variant"] for d in docs] == ["residual", "mhc"]
    assert [d["model"]["residual"]["kind"] for d in docs] == ["residual", "mhc"]


def test_residual_baseline_rejects_ablation_switches_it_cannot_honour():
    # the Pre-Norm baseline has no H maps: use_h_res=false used to be logged as a param and change nothing
    for name in ("use_h_res", "use_h_pre", "use_h_post"):
        with pytest.raises(ValueError, match=rf"model.residual.{name}=False has no effect on train.variant='residual'"):
            build_config([], ["train.variant=residual", f"model.residual.{name}=false"], env={})
    # its resolved config.yaml (all switches on) still composes
    cfg = build_config([], ["train.variant=residual"], env={})
    assert config_from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


def test_mha_flops_ignore_the_mla_only_value_head_dim():
    # v_head_dim is MLA only (MHA's values are head_dim wide): it changed MHA's MFU estimate, not its model
    base = build_config([], ["train.preset=tiny"], env={}).model
    other = build_config([], ["train.preset=tiny", "model.attention.v_head_dim=128"], env={}).model
    assert flops_per_token(other, 10**6, 128) == flops_per_token(base, 10**6, 128) == 6 * 10**6 + 6 * 4 * 4 * 64 * 128
