# edge-runtime: make run | make test | make check | make bench
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= edge-runtime.toml
TORCH_VERSION ?= 2.13.0

.PHONY: run test check lint typecheck bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Editable install with the export extra (torch CPU, transformers, optimum) and the dev tools:
# the tests check the export path and parity against PyTorch and optimum.
# torch is pinned first so the export extra's range resolves to the CPU build, not a CUDA one.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet 'torch==$(TORCH_VERSION)'
	$(BIN)/pip install --quiet -e '.[export,dev]'
	touch $@

install: $(STAMP)

run: $(STAMP)
	$(BIN)/edge-runtime doctor --config $(CONFIG)
	$(BIN)/edge-runtime generate --config $(CONFIG) --stats --max-tokens 48 "What is the temperature in the kitchen?"

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff format --check edge_runtime tests
	$(BIN)/ruff check edge_runtime tests

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

bench: $(STAMP)
	$(BIN)/edge-runtime bench model

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis *.egg-info
