"""Table 4 (downstream) and Table 1 (ablation) layouts, rendered as Markdown and LaTeX (booktabs).
Numbers are formatted with fixed precision so regenerated files are byte-identical."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from mhc_repro.reporting.collect import Study
from mhc_repro.reporting.paper_data import VARIANT_LABELS, PaperNumbers

DASH = "—"
CHECK = "✓"


@dataclass
class Table:
    """A rectangular table of display strings (unicode ±, Δ, ✓, — are translated for LaTeX)."""

    header: list[str]
    """Column titles."""
    head_rows: list[list[str]]
    """Extra header rows under the titles (e.g. metric, shots); above the first rule in LaTeX."""
    body: list[list[str]]
    """Body rows."""
    caption: str
    """One-paragraph caption (plain text)."""
    label: str
    """LaTeX label."""
    rules: set[int] = field(default_factory=set)
    """Body row indices preceded by a \\midrule (LaTeX) — group separators."""


def mean_sd(values, scale: float = 1.0, digits: int = 1) -> str:
    """'m' for one value, 'm ± s' (sample s.d.) for several, '—' for none."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=float) * scale
    if len(v) == 0:
        return DASH
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def signed(x: float, digits: int) -> str:
    if x is None or math.isnan(x):
        return DASH
    return f"{round(x, digits) + 0.0:+.{digits}f}"  # + 0.0 turns -0.0 into 0.0


def human(x: float) -> str:
    """1234567 -> '1.23M' (3 significant digits); NaN -> '—'."""
    if x is None or math.isnan(x):
        return DASH
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def _mean(values) -> float:
    v = [x for x in values if not math.isnan(x)]
    return float(np.mean(v)) if v else math.nan


# ---------------------------------------------------------------- rendering
def to_markdown(table: Table) -> str:
    rows = [table.header, ["---"] + ["---:"] * (len(table.header) - 1)]
    rows += [[f"*{r[0]}*"] + r[1:] for r in table.head_rows] + table.body
    return "\n".join("| " + " | ".join(r) + " |" for r in rows) + "\n"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_LATEX_UNICODE = {"±": r"$\pm$", "Δ": r"$\Delta$", CHECK: r"\checkmark", DASH: "--", "≤": r"$\le$",
                  "≥": r"$\ge$", "·": r"$\cdot$"}


def latex_escape(text: str) -> str:
    out = "".join(_LATEX_SPECIAL.get(c, c) for c in text)
    out = re.sub(r"(?<![\w.])-(?=\d)", r"$-$", out)  # a minus sign, not a hyphen
    for uni, tex in _LATEX_UNICODE.items():
        out = out.replace(uni, tex)
    return out


def to_latex(table: Table) -> str:
    cols = "l" + "r" * (len(table.header) - 1)
    line = lambda r: " & ".join(latex_escape(c) for c in r) + r" \\"  # noqa: E731
    out = [r"\begin{table}[t]", r"\centering", r"\small", f"\\caption{{{latex_escape(table.caption)}}}",
           f"\\label{{{table.label}}}", f"\\begin{{tabular}}{{{cols}}}", r"\toprule", line(table.header)]
    out += [line(r) for r in table.head_rows]
    out.append(r"\midrule")
    for i, r in enumerate(table.body):
        if i in table.rules and i > 0:
            out.append(r"\midrule")
        out.append(line(r))
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- Table 4
def _shots_row(study: Study, preset: str, paper: PaperNumbers) -> list[str]:
    ev = study.evals.merge(study.main_runs(preset)[["run_id"]], left_on="train_run_id", right_on="run_id")
    row = []
    for task in paper.tasks:
        shots = sorted({int(s) for s in ev[ev.task == task].shots if s >= 0})
        row.append("/".join(str(s) for s in shots) if shots else DASH)
    return row


def variant_scores(study: Study, preset: str, variant: str, task: str) -> list[float]:
    """Per-seed headline scores (fractions) of a variant's main runs at a preset, in seed order."""
    runs = study.main_runs(preset)
    runs = runs[runs.variant == variant]
    ev = study.evals[study.evals.task == task].set_index("train_run_id").score
    return [float(ev[r]) for r in runs.run_id if r in ev.index]


def table4(study: Study, paper: PaperNumbers) -> list[Table]:
    tables = []
    for preset in study.presets():
        runs = study.main_runs(preset)
        scored = set(study.evals.train_run_id)  # n counts the seeds that were evaluated, not all runs
        n_seeds = {v: int(((runs.variant == v) & runs.run_id.isin(scored)).sum()) for v in VARIANT_LABELS}
        head = [["Metric"] + [paper.task_metric[t] for t in paper.tasks],
                ["Shots (paper)"] + [str(paper.task_shots[t]) for t in paper.tasks],
                ["Shots (measured)"] + _shots_row(study, preset, paper)]
        body, rules = [], set()
        base = {t: _mean(variant_scores(study, preset, "residual", t)) * 100 for t in paper.tasks}
        for variant, label in VARIANT_LABELS.items():
            rules.add(len(body))
            scores = {t: variant_scores(study, preset, variant, t) for t in paper.tasks}
            body.append([f"{label} — paper {paper.table4_scale.upper()}"]
                        + [f"{paper.table4[variant][t]:.1f}" for t in paper.tasks])
            body.append([f"{label} — {preset} (n={n_seeds[variant]})"]
                        + [mean_sd(scores[t], 100.0) for t in paper.tasks])
            if variant != "residual":
                body.append(["Δ vs baseline — paper"] + [
                    signed(paper.table4[variant][t] - paper.table4["residual"][t], 1) for t in paper.tasks])
                body.append([f"Δ vs baseline — {preset}"] + [
                    signed(_mean(scores[t]) * 100 - base[t], 1) for t in paper.tasks])
        limits = sorted({str(x) for x in study.evals.limit if str(x).lower() not in ("", "none", "null")})
        caption = (f"Downstream results in the layout of the paper's Table 4 (scores in percent). "
                   f"Paper rows: the published {paper.table4_scale.upper()} numbers; measured rows: preset "
                   f"{preset}, mean ± sample s.d. over n seeds; Δ = variant minus baseline; per run and task, a full "
                   f"evaluation over a --limit one, then the latest checkpoint's, then the latest. "
                   + (f"Evaluated on a subset (eval.limit = {', '.join(limits)}). " if limits else "")
                   + ("No evaluation runs were found for this preset (run `mhc-repro eval`). "
                      if not study.evals.train_run_id.isin(runs.run_id).any() else ""))
        tables.append(Table(["Benchmark"] + [paper.task_labels[t] for t in paper.tasks], head, body,
                            caption.strip(), f"tab:table4-{preset}", rules))
    return tables


# ---------------------------------------------------------------- Table 1
def has_ablation(study: Study) -> bool:
    return bool(study.runs.ablation.isin(["res", "res+pre"]).any())


def level_losses(study: Study, preset: str, variant: str, ablation: str) -> list[float]:
    """Final validation losses of the matching runs; runs without a validation loss are left out."""
    r = study.runs
    sel = r[(r.preset == preset) & (r.variant == variant) & (r.ablation == ablation)]
    return [float(x) for x in sel.final_val_loss if not math.isnan(x)]


def table1(study: Study, paper: PaperNumbers) -> list[Table]:
    tables = []
    for preset in study.presets():
        r = study.runs[study.runs.preset == preset]
        variants = [v for v in ("hc", "mhc") if r[(r.variant == v)].ablation.isin(["res", "res+pre"]).any()]
        if not variants:
            continue
        base = level_losses(study, preset, "residual", "none")
        body, rules = [], set()
        mark = lambda on: CHECK if on else DASH  # noqa: E731
        p0 = paper.table1["none"]
        body.append(["Baseline", mark(False), mark(False), mark(False), str(len(base)),
                     mean_sd(base, digits=4), signed(0.0, 4) if base else DASH, signed(p0["loss_gap"], 3)])
        for variant in variants:
            rules.add(len(body))
            for level in ("res", "res+pre", "full"):
                losses = level_losses(study, preset, variant, level)
                p = paper.table1[level]
                body.append([f"{VARIANT_LABELS[variant]} ({level})", mark(p["h_res"]), mark(p["h_pre"]),
                             mark(p["h_post"]), str(len(losses)), mean_sd(losses, digits=4),
                             signed(_mean(losses) - _mean(base), 4), signed(p["loss_gap"], 3)])
        caption = (f"Ablation in the layout of the paper's Table 1, preset {preset}: final validation "
                   f"loss (mean ± sample s.d. over n seeds) and its gap to the baseline (negative = "
                   f"better). Disabled mappings are fixed (H_pre = 1/n, H_post = 1, H_res = I). Paper "
                   f"column: published gaps (the paper does not state their scale).")
        tables.append(Table(["Variant", "H_res", "H_pre", "H_post", "n", "Final val loss",
                             "Loss gap", "Loss gap (paper)"], [], body, caption, f"tab:table1-{preset}",
                            rules))
    return tables


# ---------------------------------------------------------------- files
def render(tables: list[Table], title: str, header: str, kind: str) -> str:
    """Whole file: generated-header line, then each table (Markdown with title/caption, or LaTeX)."""
    if kind == "md":
        parts = [f"<!-- {header} -->", "", f"# {title}", ""]
        for t in tables:
            parts += [to_markdown(t), t.caption, ""]
        return "\n".join(parts).rstrip("\n") + "\n"
    parts = [f"% {header}", "% Needs \\usepackage{booktabs,amssymb}.", ""]
    return "\n".join(parts) + "\n".join(to_latex(t) for t in tables)
