# TrialGuard. `make help` lists the targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= data/demo
DEMO_TERMINALS ?= 2000
DEMO_DAYS ?= 30
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 180
export PREFECT_HOME ?= $(CURDIR)/data/prefect
export TRIALGUARD_PAN_KEY_FILE ?= $(CURDIR)/data/secrets/pan.key

.DEFAULT_GOAL := help

## Show this help
.PHONY: help
help:
	@awk '/^## /{doc=substr($$0,4)} /^[a-zA-Z_-]+:/{if(doc){split($$1,t,":"); printf "  \033[36m%-16s\033[0m %s\n", t[1], doc; doc=""}}' $(MAKEFILE_LIST)

$(BIN)/trialguard: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[dev]'
	touch $@

## Create .venv with pinned dependencies (run by demo and test when needed)
.PHONY: install
install: $(BIN)/trialguard

## Create the local card-number key (0600) if absent
.PHONY: key
key:
	@mkdir -p $(dir $(TRIALGUARD_PAN_KEY_FILE))
	@test -f $(TRIALGUARD_PAN_KEY_FILE) || (umask 077 && $(BIN)/python -c "import secrets; print(secrets.token_hex(32))" > $(TRIALGUARD_PAN_KEY_FILE) && echo "created key $(TRIALGUARD_PAN_KEY_FILE)")
	@chmod 600 $(TRIALGUARD_PAN_KEY_FILE)

## Simulate a trial, run the whole pipeline on it and print where the report is
.PHONY: demo
demo: install key
	$(BIN)/trialguard demo --out $(DEMO_DIR) --terminals $(DEMO_TERMINALS) --days $(DEMO_DAYS)

## Install Debian's headless Chromium for the report's browser test (as root; no-op if present)
.PHONY: chromium
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium; \
	  else echo "chromium is missing: run 'sudo make chromium'; until then the browser test is skipped"; fi; }

## Run the test suite and the docstring examples (excludes tests marked slow)
.PHONY: test
test: install chromium
	$(BIN)/python -m pytest -q -m "not slow" --doctest-modules tests kernels features models pipelines

## Run only the slow tests
.PHONY: test-slow
test-slow: install
	$(BIN)/python -m pytest -q -m slow

## Lint and check formatting with ruff
.PHONY: lint
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## Format the code with ruff
.PHONY: format
format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

## Benchmark ingest on one simulated day of 10M transactions (BENCH_ROWS to change)
.PHONY: bench-ingest
bench-ingest: install key
	$(BIN)/trialguard bench ingest --rows $${BENCH_ROWS:-10000000}

## Benchmark the simulator (10M transactions)
.PHONY: bench-simulate
bench-simulate: install
	$(BIN)/trialguard bench simulate --rows $${BENCH_ROWS:-10000000}

## Benchmark each numba kernel against its best polars/numpy formulation (10M rows)
.PHONY: bench-kernels
bench-kernels: install
	$(BIN)/trialguard bench kernels --rows $${BENCH_ROWS:-10000000}

## Benchmark detection: one day of 10M transactions; day-60 vs day-5 cost
.PHONY: bench-run
bench-run: install key
	$(BIN)/trialguard bench run --rows $${BENCH_ROWS:-10000000}

## Remove the environment, caches and generated data
.PHONY: clean
clean:
	rm -rf $(VENV) data/demo data/warehouse data/prefect .pytest_cache .ruff_cache
