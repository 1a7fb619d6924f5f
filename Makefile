# ktb — one task runner for people and CI.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
comma  := ,

.PHONY: run test lint format bench chaos clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	@touch $(STAMP)

## run: the whole local stack (Kafka, Temporal, bridge, API, example services) in the foreground
run: $(STAMP)
	$(BIN)/ktb dev

## test: unit, integration and chaos tests against real Kafka and Temporal; TEST_WORKERS=N
## sessions in parallel (each with its own services), 0 for one session
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile) $(PYTEST_ARGS)

## lint: ruff (lint + format check) and mypy
lint: $(STAMP)
	$(BIN)/ruff check bridge services tests bench
	$(BIN)/ruff format --check bridge services tests bench
	$(BIN)/mypy

BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,bench]'
	@touch $(BENCH_STAMP)

## bench: the bridge against raw Temporal on a local stack; QUICK=1 quick sizes, SCENARIO=latency one, ROUNDS=6 more rounds
QUICK ?=
SCENARIO ?=
ROUNDS ?=
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench $(if $(QUICK),--quick) $(if $(ROUNDS),--rounds $(ROUNDS)) $(foreach s,$(subst $(comma), ,$(SCENARIO)),--scenario $(s))

## chaos: a fault-injection run of any size, e.g. make chaos EVENTS=20000 SEED=3 BRIDGE_KILLS=10
EVENTS ?= 20000
SEED ?= 1
RATE ?= 100
BRIDGE_KILLS ?= 10
WORKER_KILLS ?= 3
TEMPORAL_RESTARTS ?= 1
KAFKA_RESTARTS ?= 1
REBALANCES ?= 4
OUTAGE_S ?= 30
QUIESCE_S ?= 3600
DATA_DIR ?=
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos --events $(EVENTS) --seed $(SEED) --rate $(RATE) \
	  --bridge-kills $(BRIDGE_KILLS) --worker-kills $(WORKER_KILLS) \
	  --temporal-restarts $(TEMPORAL_RESTARTS) --kafka-restarts $(KAFKA_RESTARTS) \
	  --rebalances $(REBALANCES) --outage-s $(OUTAGE_S) \
	  --quiesce-timeout-s $(QUIESCE_S) $(if $(DATA_DIR),--data-dir $(DATA_DIR))

format: $(STAMP)
	$(BIN)/ruff check --fix bridge services tests bench
	$(BIN)/ruff format bridge services tests bench

clean:
	rm -rf $(VENV) .ktb .pytest_cache .mypy_cache .ruff_cache
