"""Builds a small MLflow store with known runs, following docs/DESIGN.md's MLflow conventions:
3 variants x 2 seeds of a 'tiny' preset, mHC ablation runs, Amax artifacts, eval child runs."""

from __future__ import annotations

import json
import math

TASKS = ("bbh", "drop", "gsm8k", "hellaswag", "math", "mmlu", "piqa", "triviaqa")
SHOTS = {"bbh": 3, "drop": 3, "gsm8k": 8, "hellaswag": 10, "math": 4, "mmlu": 5, "piqa": 0, "triviaqa": 5}
STEPS = 60
# final-loss offset per (variant, ablation): mHC clearly best, ablation ordered like Table 1
OFFSET = {("residual", "none"): 0.0, ("hc", "full"): -0.02, ("mhc", "full"): -0.04,
          ("mhc", "res"): -0.015, ("mhc", "res+pre"): -0.028}
SEED_JITTER = {0: 0.003, 1: -0.003}


def _train_loss(step: int, variant: str, ablation: str, seed: int) -> float:
    loss = 2.0 + 4.0 * math.exp(-step / 15) + OFFSET[(variant, ablation)] + SEED_JITTER[seed]
    if variant == "hc" and 40 <= step <= 44:  # HC loss surge with a grad spike (like the paper's Fig. 2)
        loss += 0.3
    return loss + 0.002 * math.sin(step * (seed + 1))


def _grad_norm(step: int, variant: str, seed: int) -> float:
    g = 1.0 + math.exp(-step / 10) + 0.02 * math.cos(step * (seed + 2))
    return g * (10.0 if variant == "hc" and step == 40 else 1.0)


def _amax(variant: str, step: int) -> dict:
    if variant == "mhc":
        return dict(step=step, fwd_single=[1.0] * 4, bwd_single=[0.99, 1.01, 1.0, 1.02],
                    fwd_composite=[1.0] * 4, bwd_composite=[1.0, 1.02, 1.05, 1.1],
                    log_colsum_single=[0.01, 0.01, 0.0, 0.02])
    g = 1.0 + step / 60
    return dict(step=step, fwd_single=[1.1 * g, 1.2, 1.3, 1.2], bwd_single=[1.2, 1.1, 1.4, 1.3],
                fwd_composite=[1.1 * g, 1.6 * g, 2.5 * g, 4.0 * g], bwd_composite=[5.0, 3.0, 1.8, 1.2],
                log_colsum_single=[0.2, 0.1, 0.3, 0.2])


def build_store(root, experiment: str = "unit") -> str:
    """Create the store under `root`; returns its tracking URI."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp_id = client.create_experiment(experiment, artifact_location=str((root / "artifacts").resolve()))
    t0 = 1_700_000_000_000
    specs = [(v, "none" if v == "residual" else "full", s) for v in ("residual", "hc", "mhc") for s in (0, 1)]
    specs += [("mhc", a, s) for a in ("res", "res+pre") for s in (0, 1)]
    for i, (variant, ablation, seed) in enumerate(specs):
        tags = {"run_kind": "train", "variant": variant, "preset": "tiny", "seed": str(seed),
                "git_commit": f"c0ffee{i:02d}", "paper": "arXiv:2512.24880", "study": experiment,
                "run_dir": f"/runs/{experiment}/{variant}-{ablation}-s{seed}",
                # seed 1 on another CPU: the index must say the runs ran on two stacks
                "env.torch": "2.13.0+cpu", "env.cuda_devices": "none",
                "env.aten_cpu_capability": "AVX512" if seed == 0 else "AVX2"}
        if variant != "residual":
            tags["ablation"] = ablation
        run = client.create_run(exp_id, start_time=t0 + i, tags=tags,
                                run_name=f"{variant}-{ablation}-s{seed}")
        rid = run.info.run_id
        metrics = []
        for step in range(1, STEPS + 1):
            ts = t0 + step
            loss = _train_loss(step, variant, ablation, seed)
            metrics += [Metric("train/loss", loss, ts, step),
                        Metric("train/grad_norm", _grad_norm(step, variant, seed), ts, step),
                        Metric("train/tokens", float(step * 1024), ts, step),
                        Metric("perf/tokens_per_sec", 1000.0 if variant == "residual" else 900.0, ts, step)]
            if step % 10 == 0:
                metrics.append(Metric("val/loss", loss + 0.05, ts, step))
        params = [Param("model.params_active", "1000000"), Param("model.params_total", "1200000"),
                  Param("model.residual.variant", variant), Param("train.seed", str(seed))]
        client.log_batch(rid, metrics=metrics, params=params)
        client.log_text(rid, f"model:\n  residual: {{variant: {variant}}}\ntrain: {{seed: {seed}}}\n",
                        "config/config.yaml")
        if variant != "residual":
            for step in (30, STEPS):
                client.log_text(rid, json.dumps(_amax(variant, step)),
                                f"diagnostics/amax_step{step:07d}.json")
        client.set_terminated(rid, end_time=t0 + 1000 + i)
        if ablation in ("none", "full"):
            _eval_run(client, exp_id, rid, variant, seed, t0 + 100 + i)
    return uri


def _eval_run(client, exp_id: str, train_id: str, variant: str, seed: int, start: int) -> None:
    from mlflow.entities import Metric, Param

    bonus = {"residual": 0.0, "hc": 0.01, "mhc": 0.02}[variant]
    tags = {"mlflow.parentRunId": train_id, "run_kind": "eval", "train_run_id": train_id,
            "variant": variant, "preset": "tiny", "seed": str(seed)}
    run = client.create_run(exp_id, start_time=start, tags=tags, run_name=f"eval-{variant}-s{seed}")
    metrics = [Metric(f"eval/{t}", 0.2 + 0.01 * k + bonus + (0.002 if seed else -0.002), start, 0)
               for k, t in enumerate(TASKS)]
    metrics += [Metric(f"eval/{t}/acc_none", 0.5, start, 0) for t in TASKS]
    params = [Param(f"eval.shots.{t}", str(SHOTS[t])) for t in TASKS]
    params += [Param("eval.limit", "20"), Param("lm_eval.version", "0.4.13")]
    client.log_batch(run.info.run_id, metrics=metrics, params=params)
    client.set_terminated(run.info.run_id, end_time=start + 10)


# ---------------------------------------------------------------- in-memory studies (no MLflow)
def make_study(losses: dict, preset: str = "tiny", evals: dict | None = None, amax: dict | None = None,
               history: list | None = None, params_active: float = 1e6, tokens: float = 1e5):
    """losses: (variant, ablation) or variant -> final val losses, one per seed.
    evals: variant -> per-seed score (fraction) used for every task."""
    import pandas as pd

    from mhc_repro.reporting.collect import EVAL_COLUMNS, RUN_COLUMNS, Study

    rows, ev = [], []
    for key, values in losses.items():
        variant, ablation = key if isinstance(key, tuple) else (key, "none" if key == "residual" else "full")
        for seed, loss in enumerate(values):
            rid = f"{preset}-{variant}-{ablation}-{seed}"
            rows.append(dict(run_id=rid, run_name=rid, status="FINISHED", preset=preset, variant=variant,
                             ablation=ablation, seed=seed, git_commit="abc", ran_on="", run_dir="", params_total=2e6,
                             params_active=params_active, final_step=100, final_train_loss=loss,
                             final_val_loss=loss, tokens=tokens, tokens_per_sec=1.0,
                             compute=6 * params_active * tokens))
            for task in TASKS if evals and variant in evals and ablation in ("none", "full") else ():
                ev.append(dict(train_run_id=rid, eval_run_id=f"e-{rid}", task=task,
                               score=evals[variant][seed], shots=0, limit="", lm_eval_version=""))
    hist = pd.DataFrame(history or [], columns=["run_id", "key", "step", "value"])
    return Study("unit", pd.DataFrame(rows, columns=RUN_COLUMNS), hist, pd.DataFrame(ev, columns=EVAL_COLUMNS),
                 amax or {})


def merge(*studies):
    import pandas as pd

    from mhc_repro.reporting.collect import Study

    return Study("unit", pd.concat([s.runs for s in studies], ignore_index=True),
                 pd.concat([s.history for s in studies], ignore_index=True),
                 pd.concat([s.evals for s in studies], ignore_index=True),
                 {k: v for s in studies for k, v in s.amax.items()})
