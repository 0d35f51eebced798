# fifoq developer tasks. `make help` lists them.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pytest-xdist workers; each starts its own throwaway PostgreSQL. `make test PYTEST_WORKERS=0` runs serially.
PYTEST_WORKERS ?= 2
PYTEST_ARGS ?=
STAMP := $(VENV)/.fifoq-installed

.DEFAULT_GOAL := help
.PHONY: help install test lint format bench demo soak schema-dump clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when pyproject.toml changes; the package itself is editable.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $@

install: $(STAMP) ## create .venv and install fifoq (editable) with the dev and bench extras

test: install ## run the test suite (without the soak tests)
	$(BIN)/pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

lint: install ## ruff check, ruff format --check, mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict fifoq

format: install ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# `make bench` and `make demo` always use a throwaway server, as the README
# says: an exported FIFOQ_DSN (say, the application's database) is ignored
# here. `fifoq bench --dsn` / `fifoq demo --dsn` run against a server of yours.
bench: install ## run the benchmarks against an embedded PostgreSQL
	env -u FIFOQ_DSN $(BIN)/fifoq bench

demo: install ## run the demo against an embedded PostgreSQL
	env -u FIFOQ_DSN $(BIN)/fifoq demo

soak: install ## run the long soak tests
	$(BIN)/pytest -m soak $(PYTEST_ARGS)

schema-dump: install ## regenerate tests/schema.sql from the migrations
	$(BIN)/python scripts/dump_schema

clean: ## remove build artefacts and caches (keeps .venv)
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
