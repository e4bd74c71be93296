"""Figures (PNG) in the style of the paper's Figs. 2/5 (loss gap, grad norm), 3/7 (Amax per sub-layer)
and 6 (compute scaling). Uses matplotlib's object API with the Agg canvas (no pyplot global state) and
fixed metadata so the files do not change between regenerations."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter, ScalarFormatter

from mhc_repro.reporting.collect import Study
from mhc_repro.reporting.paper_data import VARIANT_LABELS

COLORS = {"residual": "0.45", "hc": "tab:orange", "mhc": "tab:blue"}
RC = {"font.size": 9, "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 100, "savefig.dpi": 100,
      "lines.linewidth": 1.4, "legend.fontsize": 8}


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


def smooth_window(n_points: int, smooth: int) -> int:
    """smooth = 0: automatic (about 5% of the points); 1: none; k > 1: a k-point trailing mean."""
    if smooth < 0:
        raise ValueError(f"smooth window {smooth} is negative; allowed: 0 (auto), 1 (none), k > 1")
    return max(1, n_points // 20) if smooth == 0 else smooth


def mean_curve(study: Study, preset: str, variant: str, key: str) -> pd.Series:
    """Mean over the variant's seeds at each step, over the seeds that logged that step (step -> value).
    A seed that stopped early (failed, still running) leaves the later steps to the other seeds instead
    of cutting every seed's curve down to its own length."""
    runs = study.main_runs(preset)
    ids = list(runs[runs.variant == variant].run_id)
    h = study.history[(study.history.key == key) & study.history.run_id.isin(ids)]
    if h.empty:
        return pd.Series(dtype=float)
    return h.pivot_table(index="step", columns="run_id", values="value").mean(axis=1, skipna=True).dropna()


def _smooth(s: pd.Series, smooth: int) -> pd.Series:
    return s.rolling(smooth_window(len(s), smooth), min_periods=1).mean()


def loss_figure(study: Study, preset: str, path: Path, smooth: int) -> Path:
    fig = Figure(figsize=(9, 3.4))
    ax_loss, ax_gap = fig.subplots(1, 2)
    curves = {v: mean_curve(study, preset, v, "train/loss") for v in VARIANT_LABELS}
    for v, c in curves.items():
        if len(c):
            ax_loss.plot(c.index, _smooth(c, smooth), color=COLORS[v], label=VARIANT_LABELS[v])
    base = curves["residual"]
    for v in ("hc", "mhc"):
        gap = (curves[v] - base).dropna()
        if len(gap):
            ax_gap.plot(gap.index, _smooth(gap, smooth), color=COLORS[v], label=VARIANT_LABELS[v])
    ax_gap.axhline(0.0, color=COLORS["residual"], linewidth=0.8)
    ax_loss.set(title=f"(a) Training loss — {preset}", xlabel="step", ylabel="loss")
    ax_gap.set(title="(b) Loss gap to baseline (variant − baseline)", xlabel="step", ylabel="absolute loss gap")
    for ax in (ax_loss, ax_gap):
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    return _save(fig, path)


def grad_norm_figure(study: Study, preset: str, path: Path, smooth: int) -> Path:
    fig = Figure(figsize=(5, 3.4))
    ax = fig.subplots()
    for v in VARIANT_LABELS:
        c = mean_curve(study, preset, v, "train/grad_norm")
        if len(c):
            ax.plot(c.index, _smooth(c, smooth), color=COLORS[v], label=VARIANT_LABELS[v])
    ax.set(title=f"Gradient norm — {preset}", xlabel="step", ylabel="global grad norm")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return _save(fig, path)


def _include(ax, values, lo: float, hi: float) -> None:
    """y-limits covering the data and at least [lo, hi]."""
    finite = [v for v in values if np.isfinite(v) and v > 0]
    ax.set_ylim(min([lo] + finite) * 0.97, max([hi] + finite) * 1.03)


def amax_source(study: Study, preset: str, variant: str) -> tuple[str, dict] | None:
    """The lowest-seed run of the variant that has an Amax artifact, and that artifact."""
    runs = study.main_runs(preset)
    for rid in runs[runs.variant == variant].run_id:
        if rid in study.amax:
            return rid, study.amax[rid]
    return None


def amax_figure(study: Study, preset: str, path: Path) -> Path | None:
    rows = [(v, amax_source(study, preset, v)) for v in ("hc", "mhc")]
    rows = [(v, src) for v, src in rows if src is not None]
    if not rows:
        return None
    fig = Figure(figsize=(9, 3.2 * len(rows)))
    axes = np.atleast_2d(fig.subplots(len(rows), 2))
    for (variant, (rid, a)), (ax_s, ax_c) in zip(rows, axes):
        layers = np.arange(1, len(a["fwd_single"]) + 1)
        label = f"{VARIANT_LABELS[variant]}, step {a['step']}"
        ax_s.plot(layers, a["fwd_single"], "o-", ms=3, label="forward gain")
        ax_s.plot(layers, a["bwd_single"], "s-", ms=3, label="backward gain")
        ax_c.plot(layers, a["fwd_composite"], "o-", ms=3, label="forward gain")
        ax_c.plot(layers, a["bwd_composite"], "s-", ms=3, label="backward gain")
        # Keep 1.0 in a readable window: mHC gains sit within ~1e-6 of 1, which autoscaling would blow up.
        _include(ax_s, a["fwd_single"] + a["bwd_single"], 0.9, 1.1)
        ax_c.set_yscale("log")
        _include(ax_c, a["fwd_composite"] + a["bwd_composite"], 0.5, 2.0)
        ax_c.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax_c.yaxis.set_major_formatter(ScalarFormatter())
        ax_c.yaxis.set_minor_formatter(NullFormatter())  # minor log labels are slow and cluttered
        for ax in (ax_s, ax_c):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_s.set(title=f"Single-layer Amax — {label}", xlabel="sub-layer", ylabel="Amax gain magnitude")
        ax_c.set(title=f"Composite Amax (log) — {label}", xlabel="sub-layer", ylabel="Amax gain magnitude")
        ax_s.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))
        ax_s.legend()
        ax_c.legend()
    return _save(fig, path)


def scaling_figure(study: Study, path: Path) -> Path | None:
    """Fig. 6 style: final val loss and loss gap against compute C = 6 · N_active · tokens."""
    runs = study.runs[study.runs.ablation.isin(["none", "full"])]
    pts = runs.groupby(["preset", "variant"], sort=False).agg(
        compute=("compute", "mean"), loss=("final_val_loss", "mean")).reset_index()
    pts = pts[np.isfinite(pts.compute) & (pts.compute > 0)]
    if pts.preset.nunique() < 2:
        return None
    fig = Figure(figsize=(9, 3.4))
    ax_l, ax_g = fig.subplots(1, 2)
    base = pts[pts.variant == "residual"].set_index("preset").loss
    for v in VARIANT_LABELS:
        p = pts[pts.variant == v].sort_values("compute", kind="stable")
        if p.empty:
            continue
        ax_l.plot(p.compute, p.loss, "o-", color=COLORS[v], label=VARIANT_LABELS[v])
        if v != "residual":
            gap = p.loss.to_numpy() - p.preset.map(base).to_numpy()
            ok = ~np.isnan(gap)
            ax_g.plot(p.compute.to_numpy()[ok], gap[ok], "o-", color=COLORS[v], label=VARIANT_LABELS[v])
    top = pts.groupby("preset", sort=False).agg(compute=("compute", "mean"), loss=("loss", "max"))
    for preset, r in top.iterrows():  # one label per preset, above its highest point
        ax_l.annotate(preset, (r.compute, r.loss), fontsize=7, textcoords="offset points", xytext=(0, 6),
                      ha="center")
    ax_g.axhline(0.0, color=COLORS["residual"], linewidth=0.8)
    for ax in (ax_l, ax_g):
        ax.set_xscale("log")
        ax.margins(x=0.1, y=0.12)
        ax.set_xlabel("training compute 6·N_active·tokens (FLOPs)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    ax_l.set(title="(a) Final validation loss vs compute", ylabel="val loss")
    ax_g.set(title="(b) Loss gap to baseline vs compute", ylabel="absolute loss gap")
    return _save(fig, path)


def make_figures(study: Study, out: Path, smooth: int) -> list[Path]:
    """All figures for the study, written under out/figures; returns the written paths in order."""
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with matplotlib.rc_context(RC):
        for preset in study.presets():
            written.append(loss_figure(study, preset, fig_dir / f"loss_gap_{preset}.png", smooth))
            written.append(grad_norm_figure(study, preset, fig_dir / f"grad_norm_{preset}.png", smooth))
            written.append(amax_figure(study, preset, fig_dir / f"amax_{preset}.png"))
        written.append(scaling_figure(study, fig_dir / "scaling.png"))
    return [p for p in written if p is not None]
