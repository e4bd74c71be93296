"""Markdown pages of a report: the claims ledger (claims.md) and the index (README.md), written for a
reader who never saw the code."""

from __future__ import annotations

import math
from collections import Counter

from mhc_repro.reporting.claims import NO_EVIDENCE, NOT_REPRODUCED, REPRODUCED, RULE_TEXT, Claim
from mhc_repro.reporting.collect import Study, config_differences
from mhc_repro.reporting.paper_data import VARIANT_LABELS, PaperNumbers
from mhc_repro.reporting.tables import human

ICON = {REPRODUCED: "✅ reproduced", NOT_REPRODUCED: "❌ not reproduced", NO_EVIDENCE: "⚪ not enough evidence"}


def cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def claims_page(claims: list[Claim], header: str, experiment: str) -> str:
    lines = [f"<!-- {header} -->", "", f"# Claims ledger — experiment `{experiment}`", "",
             "Each claim of the paper (PAPER.md §1, §2, §4) is checked against the runs of this experiment. "
             "A verdict is about the scale measured here, not about the paper's scale.", "",
             f"**Rule.** {RULE_TEXT}", "", "| # | Claim | Measured at | Verdict |", "| --- | --- | --- | --- |"]
    lines += [f"| {c.key} | {cell(c.claim)} | {cell(c.scale.split(':')[0])} | {ICON[c.verdict]} |" for c in claims]
    for c in claims:
        lines += ["", f"## {c.key}. {c.claim}", "",
                  f"- **Paper:** {c.paper}", f"- **Measured:** {c.evidence}", f"- **Scale:** {c.scale}",
                  f"- **Rule:** {c.rule}", f"- **Verdict:** {ICON[c.verdict]}"]
    return "\n".join(lines) + "\n"


def _summary(study: Study, claims: list[Claim], paper: PaperNumbers) -> list[str]:
    out = []
    for preset in study.presets():
        runs = study.main_runs(preset)
        parts = []
        for v, label in VARIANT_LABELS.items():
            losses = runs[runs.variant == v].final_val_loss.dropna()
            if len(losses):
                parts.append(f"{label.replace('w/ ', '')} {losses.mean():.4f}")
        n = runs.groupby("variant").size()
        out.append(f"- **{preset}** ({human(runs.params_active.max())} active parameters, "
                   f"{human(runs.tokens.max())} training tokens, up to {int(n.max()) if len(n) else 0} seed(s) "
                   f"per variant): final validation loss (lower is better) — " + ", ".join(parts) + ".")
        c1 = next((c for c in claims if c.key == "C1" and c.scale.startswith(f"{preset}:")), None)
        if c1 is not None:
            out.append(f"  mHC against the baseline: {c1.evidence}. Paper: {c1.paper}. Verdict: "
                       f"{c1.verdict}.")
    unfinished = study.runs[study.runs.status != "FINISHED"]
    if len(unfinished):
        out.append(f"- **Caution:** {len(unfinished)} training run(s) are not finished ("
                   + ", ".join(f"{r.variant} seed {r.seed}: {r.status}" for r in unfinished.itertuples())
                   + "); their numbers are as of their last logged step.")
    for preset in study.presets():
        diff = config_differences(study, preset)
        if diff:
            shown = "; ".join(f"`{k}` = {', '.join(v)}" for k, v in list(diff.items())[:8])
            more = f" (and {len(diff) - 8} more)" if len(diff) > 8 else ""
            out.append(f"- **Caution:** the compared runs of {preset} were not trained with the same "
                       f"settings: {cell(shown)}{more}; their differences are not only the residual "
                       "variant (see each run's config).")
    commits = sorted({c for c in study.runs.git_commit if c})
    if len(commits) > 1:
        out.append(f"- **Caution:** the runs were trained from {len(commits)} different git commits "
                   "(see the run table); differences between variants may partly come from code changes.")
    machines = sorted({m for m in study.runs.ran_on if m})
    if len(machines) > 1:
        out.append(f"- **Caution:** the runs were trained on {len(machines)} different devices or software "
                   f"stacks ({cell('; '.join(machines))}); the same run ends at different losses on them (on "
                   "the CPU even AVX-512 against AVX2), so differences between variants may partly come from "
                   "that.")
    counts = Counter(c.verdict for c in claims)
    out.append(f"- Of {len(claims)} checks of the paper's claims, {counts[REPRODUCED]} reproduced, "
               f"{counts[NOT_REPRODUCED]} did not, and {counts[NO_EVIDENCE]} lack enough evidence "
               f"(see the [claims ledger](claims.md)).")
    big = paper.scales[paper.table4_scale]
    if not set(study.presets()) & set(paper.scales):
        out.append(f"- These models are far smaller and trained on far fewer tokens than the paper's "
                   f"({human(big['params_total'])} parameters, {human(big['tokens'])} tokens). Verdicts "
                   f"describe this scale only; small models score "
                   f"near chance on most Table 4 benchmarks, so those rows say little here.")
    return out


def index_page(study: Study, claims: list[Claim], paper: PaperNumbers, files: dict, header: str,
               command: str, smooth_text: str) -> str:
    exp = study.experiment
    lines = [f"<!-- {header} -->", "", f"# mHC reproduction report — experiment `{exp}`", "",
             "## In plain words", "",
             "A language model passes each token's signal through many layers; a *residual connection* "
             "lets the signal skip around each layer so deep models stay trainable. This report compares "
             "three ways to build those connections:", "",
             "- **Baseline** — the standard residual connection (one signal path).",
             "- **HC (Hyper-Connections)** — keeps 4 parallel copies of the signal and learns how to mix "
             "them at every layer. It can learn more, but the mixing can amplify the signal layer after "
             "layer; the paper saw training become unstable at large scale.",
             "- **mHC** (the paper's method, DeepSeek, "
             f"{paper.paper}) — like HC, but each mixing matrix is forced to have rows and columns summing "
             "to 1, so it can only average the copies, never blow them up.", "",
             "The paper reports that mHC trains to a lower loss than the baseline, stays as stable as the "
             "baseline where HC is not, and scores higher on downstream benchmarks. What we measured:", ""]
    lines += _summary(study, claims, paper)
    lines += ["", "How to read the verdicts: **reproduced** — our runs show the paper's effect, and for "
              "differences it is larger than the seed-to-seed noise (Welch t-test, p < 0.05); **not "
              "reproduced** — our runs clearly show the opposite, or miss the stated bound; **not enough "
              "evidence** — the difference is within noise, only one seed was run, or the data is missing. "
              "'Welch p' is the chance of a difference at least this large if the variants were truly equal."]
    lines += ["", "## Contents", ""]
    for title, target in files.items():
        lines.append(f"- [{title}]({target})")
    figs = [(t, f) for t, f in files.items() if f.endswith(".png")]
    if figs:
        lines += ["", "## Figures", ""]
        for title, target in figs:
            lines += [f"**{title}**", "", f"![{title}]({target})", ""]
        lines.append(f"Curves are means over seeds; {smooth_text}.")
    lines += ["", "## Claims at a glance", "", "| # | Claim | Measured at | Verdict |", "| --- | --- | --- | --- |"]
    lines += [f"| {c.key} | {cell(c.claim)} | {cell(c.scale.split(':')[0])} | {ICON[c.verdict]} |" for c in claims]
    lines += ["", "## Runs", "", "Training runs (MLflow run ids; configs are copies of each run's "
              "`config/config.yaml` artifact):", "",
              "| Preset | Variant | Ablation | Seed | Status | Run id | Git commit | Ran on | Steps | Tokens | "
              "Final val loss | Evaluation run | Config |",
              "| --- | --- | --- | ---: | --- | --- | --- | --- | ---: | ---: | ---: | --- | --- |"]
    ev = study.evals.drop_duplicates("train_run_id").set_index("train_run_id").eval_run_id
    for r in study.runs.itertuples():
        config = f"[config](configs/{r.run_id}.yaml)" if r.run_id in study.configs else "—"
        loss = "—" if math.isnan(r.final_val_loss) else f"{r.final_val_loss:.4f}"
        lines.append(f"| {r.preset} | {VARIANT_LABELS[r.variant]} | {r.ablation} | {r.seed} | {r.status} | "
                     f"`{r.run_id}` | `{cell(r.git_commit[:12]) or '—'}` | {cell(r.ran_on) or '—'} | "
                     f"{r.final_step} | {human(r.tokens)} | "
                     f"{loss} | {('`' + ev[r.run_id] + '`') if r.run_id in ev.index else '—'} | {config} |")
    if study.superseded:
        lines += ["", "Not used: runs with the same preset, variant, ablation and seed as a run above (a "
                  "finished run is preferred over an unfinished one, then the latest): "
                  + ", ".join(f"`{r}`" for r in study.superseded) + "."]
    versions = sorted({str(v) for v in study.evals.lm_eval_version if str(v)})
    lines += ["", "## How this was made", "",
              f"Generated by `{command}` from the MLflow experiment `{exp}`, reading runs through MLflow's "
              "search API (training runs tagged `run_kind=train`, evaluation child runs tagged "
              "`run_kind=eval`). Paper numbers come from `mhc_repro/reporting/paper_numbers.yaml`."
              + (f" Evaluation: lm-eval {', '.join(versions)}." if versions else "")
              + " Every file here is generated; regenerate instead of editing."]
    return "\n".join(lines) + "\n"
