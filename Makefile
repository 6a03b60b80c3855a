# convnext-pl: `make help` lists the targets. `make demo` and `make test` set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install-stamp
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast lint format summary roadmap ladder figures bench clean

help: ## Show this help.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the package editable with dev extras (no-op when up to date).

demo: install ## Train ConvNeXt on the offline digits data set and print the validation metrics.
	$(PY) main.py fit --config configs/experiment/digits.yaml

test: install ## Run the whole CPU suite (GPU tests skip themselves without CUDA).
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: install ## Run the suite without the slow (multi-process, notebook) tests.
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: install ## Ruff lint and format check.
	$(PY) -m ruff check convnext_pl tests benchmarks main.py
	$(PY) -m ruff format --check convnext_pl tests benchmarks main.py

format: install ## Apply ruff's formatter and safe fixes.
	$(PY) -m ruff check --fix convnext_pl tests benchmarks main.py
	$(PY) -m ruff format convnext_pl tests benchmarks main.py

summary: install ## Params, GFLOPs and feature maps of MODEL (default convnext_tiny).
	$(PY) -m convnext_pl.models.summary --model $(or $(MODEL),convnext_tiny)

clean: ## Remove run outputs and caches (keeps .venv).
	rm -rf runs .pytest_cache .ruff_cache
