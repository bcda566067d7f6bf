# The two commands a new user needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv proto proto-check package-check lint unit integration contract e2e faults test demo demo-kafka kafka-up kafka-down bench clean

venv: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e . --group dev
	touch $(STAMP)

# Regenerates the protobuf/gRPC code and its type stubs from proto/.
proto: venv
	$(BIN)/python tools/gen_proto.py adapters/proto

# Fails when the committed generated code differs from what proto/ gives.
proto-check: venv
	rm -rf .cache/proto-check && mkdir -p .cache/proto-check
	$(BIN)/python tools/gen_proto.py .cache/proto-check
	diff -r -x __pycache__ adapters/proto/jobworker .cache/proto-check/jobworker || { echo "generated code is stale: run 'make proto'"; exit 1; }

lint: venv proto-check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy -p jobworker
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile

# The Dockerfile's build steps without Docker: wheel, clean virtualenv, a real run.
package-check:
	PYTHON=$(PYTHON) tools/check_package.sh

unit: venv
	$(BIN)/pytest tests/unit -q

integration: venv
	$(BIN)/pytest tests/integration -q

# A local broker from Maven jars: needs only Java 17+ and Maven, not the virtualenv.
# stdout is one line, `export KAFKA_BROKERS=…`, so: eval "$(make kafka-up)"
kafka-up:
	@tools/kafka/broker.sh up

kafka-down:
	@tools/kafka/broker.sh down

contract: venv
	tools/kafka/with-broker.sh $(BIN)/pytest tests/contract -q

e2e: venv
	tools/kafka/with-broker.sh $(BIN)/pytest tests/e2e -q

faults: venv
	tools/kafka/with-broker.sh $(BIN)/pytest tests/faults -q

# Everything: lint, then every test tier; a local Kafka broker is started from Maven
# jars when no KAFKA_BOOTSTRAP_SERVERS is given and no Docker engine can supply the image.
test: lint package-check
	tools/kafka/with-broker.sh $(BIN)/pytest tests -q

demo: venv
	$(BIN)/python -m jobworker.entrypoints.demo

demo-kafka: venv
	tools/kafka/with-broker.sh $(BIN)/python -m jobworker.entrypoints.demo --kafka

# The engine in one process (bench/run.py), then end to end (bench/e2e.py): the local
# broker, a Core process and the worker CLI. BENCH_E2E_ARGS=--quick for a shorter run.
bench: venv
	$(BIN)/python bench/run.py
	tools/kafka/with-broker.sh $(BIN)/python bench/e2e.py $(BENCH_E2E_ARGS)

clean:
	rm -rf $(VENV) .cache build *.egg-info
