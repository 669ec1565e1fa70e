# The two commands of the README: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TRIAGE := $(BIN)/triage --config config.toml
DEMO_TRAIN := --data demo/training.csv --text-column subject --text-column body \
	--label kind --label area --label urgency

.PHONY: demo test lint format demo-reset clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## demo: set up, train the demo model if none is active, triage the sample mailbox once
demo: $(STAMP)
	@$(TRIAGE) --log-level ERROR models active >/dev/null 2>&1 \
		|| $(TRIAGE) --log-level WARNING train $(DEMO_TRAIN) --activate
	$(TRIAGE) --log-level WARNING run --once
	@echo "Forwards are in var/forwards/ (one .eml each); history: $(TRIAGE) stats"

## test: set up and run the whole suite (lint included)
test: lint
	$(BIN)/pytest --cov --cov-report=term

## lint: what .pre-commit-config.yaml checks, without changing files
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/codespell
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

## demo-reset: forget the demo's history, forwards and models (keeps the environment)
demo-reset:
	rm -rf var models/[0-9]*

clean: demo-reset
	rm -rf $(VENV)
