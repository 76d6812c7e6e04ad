# The two commands a newcomer needs:  `make demo`  and  `make test`.
# Each creates .venv (Python 3.11+) and installs the project into it on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench bench-enqueue install quickstart

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

## Start Redis, an S3+SQS server, Flower, the producer and both workers on loopback; upload synthetic
## images; print their results. Pass flags with ARGS, e.g. `make demo ARGS=--stay-up`.
demo: $(BIN)/.installed
	$(BIN)/vehicle-demo $(ARGS)

## The whole test suite, the slow and integration tests included (they start their own servers).
test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/hadolint Dockerfile.gpu
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml

## The training loop end to end on a loopback S3 (moto): synthetic data -> train -> evaluate -> publish.
## The report lands in quickstart-out/report/ (report.md, confusion.png, misclassified/).
quickstart: $(BIN)/.installed
	$(BIN)/python -m devstack.quickstart --bucket quickstart --out quickstart-out $(ARGS)

bench: $(BIN)/.installed
	$(BIN)/python -m vehicle_core.bench $(ARGS)

## Enqueue throughput into a throwaway redis-server: one message per round trip vs batched (ARGS=--keys N).
bench-enqueue: $(BIN)/.installed
	$(BIN)/python -m producer.bench_enqueue --start-redis $(ARGS)
