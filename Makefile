# Two entry points for a fresh machine: `make run` and `make test`. Both are idempotent.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: run test lint install services db bench clean-test-db

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@$(PY) -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

install: $(STAMP)

services: install
	@scripts/ensure_services.sh

db: install services
	@$(PY) manage.py ensure_database
	@$(PY) manage.py migrate --noinput -v 0

run: db
	@scripts/ensure_sandbox_tools.sh
	@scripts/run_all.sh

# Lint first: a broken layer contract or an import cycle fails in seconds, before the suite.
lint: install
	@$(VENV)/bin/ruff check --quiet .
	@out=$$($(VENV)/bin/lint-imports --no-cache 2>&1) || { echo "$$out"; exit 1; }

# Three test processes, each with a stack of its own (tests/settings_env.py): most of a test's time is spent
# waiting for workers, servers, leases and restarts, so three share two cores well (8-9 minutes against
# 10-13 with two). A test file stays in one process.
test: install services lint
	@scripts/ensure_sandbox_tools.sh
	@scripts/ensure_browser.sh
	@$(PY) -m pytest -n 3 --dist loadfile

# The performance targets, this checkout against the last commit before the performance work (bench/README.md).
bench: db
	@$(PY) bench/compare.py $(ARGS)
