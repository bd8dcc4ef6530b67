# The README's verbs. Everything a fresh clone needs is installed by these targets.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all test-postgres compose-config airflow lint bench clean

# Idempotent: reinstalls only when requirements.txt or pyproject.toml changed.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24"
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check
	@touch $(STAMP)

install: $(STAMP)

## Build the tiny model, simulate the product and run weekly cycles through Airflow.
demo: install
	$(BIN)/python -m flywheel.demo

## The test suite (unit, DAG integrity, one full cycle through `airflow dags test`).
test: install
	$(BIN)/python -m pytest -m "not slow"

test-all: install
	$(BIN)/python -m pytest

## Airflow's services on a PostgreSQL of their own (scripts/postgres.sh), driven through the
## REST API: a triggered weekly run and a backfill (also part of `make test`).
test-postgres: install
	$(BIN)/python -m pytest -m postgres

## Validate docker-compose.yaml (and .env) with Docker Compose v2's own parser; no engine needed.
compose-config: install
	"$$($(BIN)/python -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).with_name("docker-compose"))')" config --quiet
	@echo "docker-compose.yaml: valid"

## The Airflow UI on http://localhost:8080 over the demo's warehouse (airflow standalone).
airflow: install
	$(BIN)/python -m flywheel.localenv standalone

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf data .airflow .cache
