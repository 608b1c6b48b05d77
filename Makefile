# imaging-proxy: `make run` starts the demo, `make test` runs everything. Both install what they need.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
TOOLS := $(CURDIR)/.tools/bin
OPA_VERSION := v1.22.2
GHZ_VERSION := v0.120.0
GRPCURL_VERSION := v1.9.3
OPA := $(TOOLS)/opa
PROTO_SRC := $(shell find protos -name '*.proto')
PROTO_STAMP := service/_proto/.generated
export PATH := $(TOOLS):$(CURDIR)/$(BIN):$(PATH)

.PHONY: run test lint typecheck policy-test pytest install protos dist tools fuzz soak faults chaos bench redis clean

run: install $(OPA)
	$(BIN)/imaging-proxy demo

# grpcurl and ghz: tests/e2e/test_reflection.py runs both against the demo by reflection.
test: install $(OPA) $(TOOLS)/grpcurl $(TOOLS)/ghz redis
	$(MAKE) --no-print-directory lint typecheck policy-test pytest

install: $(VENV)/.installed $(PROTO_STAMP)

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 is required"'
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# Stubs are generated from the .proto by grpcio-tools (type stubs by mypy-protobuf), never
# edited by hand. This is for the checkout (an editable install); a wheel generates its own.
$(PROTO_STAMP): $(PROTO_SRC) $(VENV)/.installed
	rm -rf service/_proto && mkdir -p service/_proto
	$(BIN)/python -m grpc_tools.protoc -Iservice/_proto=protos \
	  --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. \
	  $(patsubst protos/%,service/_proto/%,$(PROTO_SRC))
	touch $@

protos: $(PROTO_STAMP)

# The wheel and sdist in dist/: setup.py generates the stubs into the wheel and adds policies/.
dist: install
	rm -rf dist && $(BIN)/python -m build --outdir dist

# The real OPA server, built from source with the Go toolchain and reused when present.
# Without Go: download the release binary for your platform into .tools/bin/opa (see README).
$(OPA):
	mkdir -p $(TOOLS)
	GOBIN=$(TOOLS) go install github.com/open-policy-agent/opa@$(OPA_VERSION)

$(TOOLS)/ghz:
	GOBIN=$(TOOLS) go install github.com/bojand/ghz/cmd/ghz@$(GHZ_VERSION)

$(TOOLS)/grpcurl:
	GOBIN=$(TOOLS) go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

tools: $(OPA) $(TOOLS)/ghz $(TOOLS)/grpcurl

# Tests with several replicas need a real redis-server (Debian package).
redis:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq redis-server >/dev/null; fi; }

PY_DIRS = $(wildcard service emulator medical_imaging_model tests benchmarks)

lint: install
	$(BIN)/ruff check $(PY_DIRS)
	$(BIN)/ruff format --check $(PY_DIRS)

typecheck: install
	$(BIN)/mypy service emulator medical_imaging_model

# tests/policy/ holds the fact-driven cases (standard_cases.json, made by generate_cases.py) and
# their Rego test: loaded by `opa test`, never by the OPA server, which loads policies/ only.
POLICY_TESTS := policies/ tests/policy/

policy-test: $(OPA)
	$(OPA) fmt --diff --fail $(POLICY_TESTS)
	$(OPA) check --strict $(POLICY_TESTS)
	$(OPA) test $(POLICY_TESTS)
	$(OPA) test --coverage --threshold 100 --format json $(POLICY_TESTS) > /dev/null || { \
	  $(OPA) test --coverage --format json $(POLICY_TESTS) | $(BIN)/python -c 'import json, sys; \
	  [print(f, r["not_covered"]) for f, r in json.load(sys.stdin)["files"].items() if r.get("not_covered")]'; \
	  echo "opa test coverage below 100%"; exit 1; }

pytest: install $(OPA)
	$(BIN)/pytest -q -p no:cacheprovider

fuzz: install $(OPA)
	HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest -q -p no:cacheprovider tests -k fuzz

# Steady load with random emulator faults (tests/soak); `make test` runs it for 60 s.
soak: install $(OPA) redis
	SOAK_SECONDS=$${SOAK_SECONDS:-600} SOAK_REPORT=$${SOAK_REPORT:-soak-report.json} \
	  $(BIN)/pytest -q -p no:cacheprovider -s --basetemp=.soak tests/soak

# The six benchmarks of docs/BENCHMARKS.md, full size (about 35 minutes); results in build/bench/.
bench: install $(OPA) $(TOOLS)/ghz redis
	$(BIN)/python -m benchmarks

faults: install $(OPA) redis
	$(BIN)/pytest -q -p no:cacheprovider tests/e2e/faults

# The chaos campaign (docs/CONCURRENCY.md, "Failure model"): three replicas, a real redis-server
# restarted, emptied and stopped, replicas killed and frozen; figures printed, any breach fails.
# `make test` runs its quick subset (split-brain, a Redis restart, an orphaned stream).
chaos: install $(OPA) redis
	CHAOS=full $(BIN)/pytest -q -s -p no:cacheprovider tests/chaos

clean:
	rm -rf $(VENV) service/_proto .tools dist
