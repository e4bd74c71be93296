# mhc-repro — every target installs what it needs first (a venv in .venv), so on a fresh machine
# `make reproduce` and `make test` are the whole set-up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is pinned to the CPU wheel for the default (laptop/CI) path; GPU users pass their own:
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
# Paper-scale knobs: see README "Training at scale" (NODES, GPUS, DATA, MICRO_BATCH).
NODES ?= 1
GPUS ?= 8
DATA ?=
MICRO_BATCH ?= 1

.PHONY: install test test-fast reproduce reproduce-3b reproduce-9b reproduce-27b reproduce-3b-1t \
        train-tiny eval report ui bench params clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml requirements/cpu-constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" -e ".[test]" -c requirements/cpu-constraints.txt
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

params: $(STAMP)
	$(VENV)/bin/mhc-repro params --preset 3b
