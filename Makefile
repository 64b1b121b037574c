# Two entry points on a fresh clone: `make run` (the main job) and `make test`.
# Both create .venv and install the pinned dependencies first, once (idempotent).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PARAMS ?= params.yaml

.PHONY: run test venv fetch clean

# Prefect: ephemeral local server (cold start ~20 s), state under .prefect/; MLflow: ./mlflow.db.
run: export PREFECT_HOME ?= $(CURDIR)/.prefect
run: export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90
run: export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
run: export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db

run: $(STAMP)
	$(BIN)/coopprune fetch-default
	$(BIN)/python -m flows.prune_release --params $(PARAMS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

venv: $(STAMP)

fetch: $(STAMP)
	$(BIN)/coopprune fetch-default

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; assert (3, 11) <= sys.version_info[:2] <= (3, 13), "coopprune needs Python 3.11 to 3.13 (set PYTHON=...)"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing pinned dependencies into $(VENV) (first time: a few minutes)"
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.lock 2>&1 | { grep -v "is ignored: it is neither" || true; }
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 | { grep -v "is ignored: it is neither" || true; }
	touch $@

clean:
	rm -rf $(VENV) runs .pytest_cache
