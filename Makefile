# greekfire: `make demo` and `make test` work on a fresh clone (they create .venv first).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
PIP := $(PY) -m pip
# The CPU build of torch is pinned for this kind of machine; on a GPU machine install your CUDA build of
# torch into .venv first and it is kept (we only install torch when none is importable).
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: help venv dev demo test test-unit bench lint services clean

help:
	@echo "make demo   - set up .venv and run 'greekfire demo' (embedded defaults: SQLite, local files, simulator)"
	@echo "make test   - set up .venv with the dev extras and run the whole test suite"
	@echo "make bench  - run benchmarks/, results in benchmarks/results/*.json"
	@echo "make lint   - ruff + mypy on src/ + the import-layer contract"

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools

$(VENV)/.torch: | $(BIN)/activate
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	@touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PIP) install -q -e .
	@touch $@

$(VENV)/.dev-installed: pyproject.toml $(VENV)/.installed
	$(PIP) install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed
dev: $(VENV)/.dev-installed

demo: venv
	$(BIN)/greekfire demo

test: dev
	$(BIN)/lint-imports
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: dev
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

bench: dev
	$(PY) benchmarks/run.py

lint: dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src
	$(BIN)/lint-imports

services:
	bash scripts/test-services.sh

clean:
	rm -rf $(VENV) .greekfire .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
