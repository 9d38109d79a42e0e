# The two commands a newcomer needs: `make run` (the main job) and `make test` (the test suite).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint venv clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[agents,dev]"
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check sd2ail_reward tests agents benchmarks scripts
	$(BIN)/mypy

test: $(STAMP) lint
	PYTHONHASHSEED=0 $(BIN)/pytest -q

clean:
	rm -rf $(VENV)
