# ktb — one task runner for people and CI.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: run test lint format bench chaos clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	@touch $(STAMP)

## run: the whole local stack (Kafka, Temporal, bridge, API, example services) in the foreground
run: $(STAMP)
	$(BIN)/ktb dev

## test: unit, integration and chaos tests against real Kafka and Temporal
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## lint: ruff (lint + format check) and mypy
lint: $(STAMP)
	$(BIN)/ruff check bridge services tests bench
	$(BIN)/ruff format --check bridge services tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix bridge services tests bench
	$(BIN)/ruff format bridge services tests bench

clean:
	rm -rf $(VENV) .ktb .pytest_cache .mypy_cache .ruff_cache
