"""Figures that the MLflow end-to-end test does not reach: compute scaling (several presets) and
curves with missing data."""

from reporting_fixtures import make_study, merge

from mhc_repro.reporting import figures


def test_scaling_figure_needs_two_presets(tmp_path):
    small = make_study({"residual": [3.0, 3.1], "hc": [2.95], "mhc": [2.9, 2.92]}, preset="tiny")
    large = make_study({"residual": [2.5], "mhc": [2.45]}, preset="small", params_active=1e7, tokens=1e7)
    assert figures.scaling_figure(small, tmp_path / "one.png") is None
    path = figures.scaling_figure(merge(small, large), tmp_path / "scaling.png")
    assert path.stat().st_size > 1000


def test_figures_tolerate_missing_curves(tmp_path):
    study = make_study({"residual": [3.0], "mhc": [2.9]})  # no metric history, no Amax artifacts
    written = figures.make_figures(study, tmp_path, smooth=1)
    assert [p.name for p in written] == ["loss_gap_tiny.png", "grad_norm_tiny.png"]
    assert all(p.stat().st_size > 0 for p in written)


def test_mean_curve_keeps_the_steps_of_seeds_that_ran_longer():
    # seed 0 stopped after 2 steps (crashed / still running); seed 1 ran all 5
    hist = [("tiny-mhc-full-0", "train/loss", s, 5.0) for s in (1, 2)]
    hist += [("tiny-mhc-full-1", "train/loss", s, 3.0) for s in range(1, 6)]
    study = make_study({"residual": [3.0], "mhc": [2.9, 2.8]}, history=hist)
    curve = figures.mean_curve(study, "tiny", "mhc", "train/loss")
    assert list(curve.index) == [1, 2, 3, 4, 5]
    assert list(curve) == [4.0, 4.0, 3.0, 3.0, 3.0]
