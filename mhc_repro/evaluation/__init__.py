"""Evaluation on the paper's downstream suite through lm-evaluation-harness.

engine.py     batching core (length-sorted scoring, KV-cache greedy decoding); no lm-eval import
lm_model.py   lm-eval model ``mhc-repro`` (TemplateLM) over the engine
suite.py      eval/paper_suite.yaml -> SuiteTask; stock lm-eval YAMLs and group members
offline.py    generated task YAMLs: per-task shots, local JSONL data directory
runner.py     simple_evaluate over the generated tasks -> SuiteResult
mlflow_log.py SuiteResult -> MLflow child run of the training run
cli.py        ``mhc-repro eval``
"""
