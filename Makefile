# One command per job; .ci/run calls `make test` verbatim.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PRUNEGYM_CIFAR10 ?= $(abspath ../shared/data/cifar10)

.PHONY: setup demo test test-fast lint typecheck

$(BIN)/prunegym: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: $(BIN)/prunegym

demo: setup
	$(BIN)/prunegym demo --threads 1 --out runs/demo

# pytest exits 5 when it collected no test; say so, and keep the failure.
test: setup
	$(BIN)/pytest || { s=$$?; [ $$s -ne 5 ] || echo "pytest collected no tests" >&2; exit $$s; }

test-fast: setup
	$(BIN)/pytest -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy
