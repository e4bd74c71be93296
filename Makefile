# mhc-repro — every target installs what it needs first (a venv in .venv), so on a fresh machine
# `make reproduce` and `make test` are the whole set-up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is pinned for the default (laptop/CI) path: the CPU wheel where the index serves one (CI and the
# development machines; plain PyPI on Linux serves the CUDA-bundling build); GPU users pass their own:
#   make install TORCH_SPEC="torch==2.11.0"
TORCH_SPEC ?= torch==2.13.0
export HF_DATASETS_OFFLINE ?= 1
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export PYTHONUNBUFFERED := 1

# Study knobs (override on the command line, e.g. `make reproduce STUDY=tiny2 SEEDS="0 1"`).
STUDY ?= tiny
SEEDS ?= 0
VARIANTS ?= residual hc mhc
# Paper-scale knobs: see README "Training at scale" (NODES, GPUS, DATA, MICRO_BATCH). Empty GPUS and
# MICRO_BATCH keep the experiment file's values (train.devices: auto = every visible GPU; data.batch_size: 2),
# so `make reproduce-3b` and `mhc-repro train --config experiments/3b/base.yaml ...` resolve to the same run.
NODES ?= 1
GPUS ?=
DATA ?=
MICRO_BATCH ?=
# Multi-node launcher prefix, e.g. LAUNCH="srun --ntasks-per-node=8" (empty: Lightning spawns one process per GPU).
LAUNCH ?=

.PHONY: install test test-fast reproduce reproduce-3b reproduce-9b reproduce-27b reproduce-3b-1t \
        ablation eval report ui bench params clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml requirements/cpu-constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-cache-dir --upgrade pip
	$(PY) -m pip install -q --no-cache-dir "$(TORCH_SPEC)" -e ".[test]" -c requirements/cpu-constraints.txt
	@touch $(STAMP)

# pytest-xdist workers (TEST_WORKERS=0: one process). 2 on the 2-core dev machine: 425 s of tests
# against 554-611 s in one process (reports/records/ci/README.md, session 27)
TEST_WORKERS ?= 2

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not slow" tests

MHC := $(VENV)/bin/mhc-repro
EVAL_DATA ?=
EVAL_ARGS ?=
MLFLOW_PORT ?= 5000

params: $(STAMP)
	$(MHC) params --preset 3b

# The main job: tiny baseline / HC / mHC on the bundled corpus (CPU), scored on the bundled eval
# fixtures, then the report. Rerunning continues unfinished runs and skips finished ones.
reproduce: $(STAMP)
	@for s in $(SEEDS); do \
	  $(MHC) train --config experiments/tiny/base.yaml --variants $(VARIANTS) \
	    --set train.seed=$$s --set tracking.study=$(STUDY) || exit $$?; done
	$(MHC) eval --study $(STUDY) --data-dir eval/fixtures --threads 1 $(EVAL_ARGS)
	$(MHC) report --experiment $(STUDY)
	@echo "Report: reports/$(STUDY)/README.md   MLflow UI: make ui"

# Table 1 ablation on the tiny study: mHC with H_res only and H_res + H_pre (the full mHC and the
# baseline come from `make reproduce`); the report then adds the ablation table.
ablation: $(STAMP)
	@for s in $(SEEDS); do for a in res res+pre; do \
	  $(MHC) train --config experiments/tiny/base.yaml --variants mhc --set train.ablation=$$a \
	    --set train.seed=$$s --set tracking.study=$(STUDY) || exit $$?; done; done
	$(MHC) report --experiment $(STUDY)

# Paper scale (Table 5) on GPUs. One node: Lightning starts one process per GPU. Several nodes: run
# the same command under SLURM (srun) or torchrun on every node with MHC_NUM_NODES set; see README.
define paper_study
	@for s in $(SEEDS); do \
	  MHC_NUM_NODES=$(NODES) $(if $(GPUS),MHC_GPUS_PER_NODE=$(GPUS)) $(if $(DATA),MHC_DATA=$(DATA)) \
	  $(LAUNCH) $(MHC) train --config experiments/$(1)/base.yaml --variants $(VARIANTS) \
	    --set train.seed=$$s $(if $(MICRO_BATCH),--set data.batch_size=$(MICRO_BATCH)) || exit $$?; done
	$(MHC) eval --study $(1) --device cuda $(if $(EVAL_DATA),--data-dir $(EVAL_DATA)) $(EVAL_ARGS)
	$(MHC) report --experiment $(1)
endef

reproduce-3b: $(STAMP)
	$(call paper_study,3b)
reproduce-9b: $(STAMP)
	$(call paper_study,9b)
reproduce-27b: $(STAMP)
	$(call paper_study,27b)
reproduce-3b-1t: $(STAMP)
	$(call paper_study,3b-1t)

eval: $(STAMP)
	$(MHC) eval $(if $(RUN),--run $(RUN),--study $(STUDY)) $(if $(EVAL_DATA),--data-dir $(EVAL_DATA)) $(EVAL_ARGS)

report: $(STAMP)
	$(MHC) report --experiment $(STUDY)

# MLflow UI on the local store (127.0.0.1 only).
ui: $(STAMP)
	@mkdir -p mlruns
	$(VENV)/bin/mlflow ui --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlruns/mlflow.db}" \
	  --default-artifact-root "$(CURDIR)/mlruns/artifacts" --host 127.0.0.1 --port $(MLFLOW_PORT)

# Kernel benchmark (needs a CUDA GPU): fused mHC vs residual / reference, one process. Writes a new
# JSON record (commit + time in the name: nothing earlier is overwritten) and the time-budget plot of
# its first C (reports/kernels/plot_time_budget.py).
# (commit and time are looked up when bench runs, not at every make invocation; BENCH_OUT=... overrides)
bench: $(STAMP)
	@commit=$$(git rev-parse --short HEAD 2>/dev/null || echo unknown); \
	out=$${BENCH_OUT:-reports/kernels/bench_$${commit}_$$(date +%Y%m%d-%H%M%S).json}; \
	$(PY) benchmarks/bench_mhc.py --C 2048 2560 4096 --commit $$commit --out $$out && \
	$(PY) reports/kernels/plot_time_budget.py $$out $${out%.json}_time_budget.png

clean-venv:
	rm -rf $(VENV)
