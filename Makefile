# The README's verbs. Everything a fresh clone needs is installed by these targets.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pytest-xdist workers for the test targets: one per core, at most 4 (each holds torch and Airflow
# in memory); `make test TEST_WORKERS=0` runs in one process. See tests/conftest.py.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))

.PHONY: install emulators demo ingest test test-random test-slow test-all test-postgres test-celery compose-config airflow lint bench clean

# Idempotent: reinstalls only when requirements.txt or pyproject.toml changed.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24"
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check
	@touch $(STAMP)

install: $(STAMP)

## The warehouse emulators the contract tests run against (BigQuery's in its own venv); idempotent.
emulators: install
	$(BIN)/python scripts/emulators.py install

## Build the tiny model, simulate the product and run weekly cycles through Airflow.
demo: install
	$(BIN)/python -m flywheel.sim.demo

## A product's log files into the configured warehouse (docs: README, "Your own logs"):
## `make ingest FILES="logs/week1.jsonl logs/week2.csv" [SHAPE=openai_chat]`. The plugins' path opens a cloud
## warehouse through its Airflow connection.
ingest: install
	@test -n "$(FILES)" || { echo 'usage: make ingest FILES="logs/week1.jsonl logs/week2.csv"'; exit 2; }
	PYTHONPATH=plugins $(BIN)/python -m flywheel.ingest $(if $(SHAPE),--shape $(SHAPE)) $(FILES)

## The test suite (unit, DAG integrity, the warehouse contract on DuckDB and both emulators,
## cycles through real Airflow, the review UI in a browser). The stack tests have their own
## targets (`make test-celery`, which CI runs after this one, and `make test-postgres`).
test: install emulators
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow and not postgres and not celery" --durations=15

## `make test`'s selection in a shuffled order (pytest-randomly; the seed is printed in the
## header): no test may need another to have run first. `make test-random SEED=n` repeats an order.
test-random: install emulators
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -p randomly $(if $(SEED),--randomly-seed=$(SEED)) -m "not slow and not postgres and not celery"

## The slow suites (the negative flywheel: a poisoned week through the cycle and the A/B, on the
## default tiny model; the learning test; a backfill run twice; the new-data twin through Airflow);
## CI runs them after `make test` and `make test-celery`.
test-slow: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "slow and not postgres and not celery" --durations=5

test-all: install emulators
	$(BIN)/python -m pytest

## Airflow's services on a PostgreSQL of their own (scripts/postgres.sh), driven through the
## REST API: a triggered weekly run and a backfill of three weeks. Not in CI: the Celery stack
## test covers it on the same Postgres, and CI's 60 minutes do not hold both.
test-postgres: install
	$(BIN)/python -m pytest -m postgres

## The CeleryExecutor stack: Redis (scripts/redis.sh) as broker, PostgreSQL, the four services
## and two Celery workers (default and training queue, each its own "machine" sharing only the
## artefact bucket), driven through the REST API: a weekly run and a two-week backfill.
test-celery: install
	$(BIN)/python -m pytest -m celery

## Validate docker-compose.yaml (and .env) with Docker Compose v2's own parser; no engine needed.
compose-config: install
	"$$($(BIN)/python -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).with_name("docker-compose"))')" config --quiet
	@echo "docker-compose.yaml: valid"

## The Airflow UI on http://localhost:8080 over the demo's warehouse (airflow standalone).
airflow: install
	$(BIN)/python -m flywheel.sim.localenv standalone

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: install
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf data .airflow .cache
