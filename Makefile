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
# `make test` runs the suite on one pytest-xdist worker a CPU (at most 4; `make test PYTEST_WORKERS=0` runs
# it in one process). A test file is one unit of work, the docs examples one unit a page, handed out in file
# order, the integration tests (the longest) first (tests/conftest.py)
PYTEST_WORKERS ?= auto
PEERS ?= .venv-peers

.PHONY: help venv dev demo test test-unit bench peers lint services clean

help:
	@echo "make demo   - set up .venv and run 'greekfire demo' (embedded defaults: SQLite, local files, simulator)"
	@echo "make test   - set up .venv with the dev extras and run the whole test suite"
	@echo "make bench  - run benchmarks/, results in benchmarks/results/*.json"
	@echo "make peers  - the benchmark peers (hftbacktest, nautilus_trader) in their own $(PEERS)"
	@echo "make lint   - ruff + mypy on src/ + the import-layer contract"

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools

$(VENV)/.torch: | $(BIN)/activate
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH_SPEC)"
	@touch $@

# `make demo` runs a training stage and builds the servers: the train and serve extras (a bare
# `pip install greekfire` is the lean core).
$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PIP) install -q -e '.[train,serve]'
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
	$(BIN)/pytest -n $(PYTEST_WORKERS) --maxprocesses 4 --dist loadfile --no-loadscope-reorder --durations 25 $(PYTEST_ARGS)

test-unit: dev
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

# Benchmark peers in their own virtualenv (they pin numpy/pandas below ours). `make bench` tries it first
# and carries on when it fails: the peer rows then say why (from $(PEERS)/install.log).
$(PEERS)/.installed: benchmarks/peers-requirements.txt benchmarks/peers-nodeps.txt
	@rm -f $@; mkdir -p $(PEERS)
	@echo "installing benchmark peers into $(PEERS) (log: $(PEERS)/install.log)"
	@set -o pipefail; { $(PYTHON) -m venv $(PEERS) \
	  && $(PEERS)/bin/python -m pip install --upgrade pip \
	  && $(PEERS)/bin/python -m pip install -r benchmarks/peers-requirements.txt \
	  && $(PEERS)/bin/python -m pip install --no-deps -r benchmarks/peers-nodeps.txt; } >$(PEERS)/install.log 2>&1 \
	  || { echo "peers install failed:"; tail -n 3 $(PEERS)/install.log; exit 1; }
	@touch $@

peers: $(PEERS)/.installed

bench: dev
	@$(MAKE) --no-print-directory peers || echo "benchmark peers not installed; their rows say 'not run'"
	$(PY) benchmarks/run.py

lint: dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src
	$(BIN)/lint-imports

services:
	bash scripts/test-services.sh

clean:
	rm -rf $(VENV) .greekfire .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
