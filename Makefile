# The two commands a newcomer needs: `make run` (the main job) and `make test` (the test suite).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint venv clean

# The main job. Hopper-v5 needs demos/Hopper-v5.zarr, whose expert is still training (see
# README); until it lands, `make run` imitates the committed Pendulum-v1 expert from one
# swing-up demonstration (episode 6). Override with e.g. `make run RUN_ARGS="--env Hopper-v5
# --demos demos/Hopper-v5.zarr --num-demos 1 --steps 250000"`.
RUN_ARGS ?= --env Pendulum-v1 --demos demos/Pendulum-v1.zarr --demo-episodes 6 \
	--steps 20000 --start-steps 1000 --chunk 200 --eval-every 2000 --hidden-sizes 128 128

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[agents,dev]"
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/sd2ail-reward train $(RUN_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check sd2ail_reward tests agents benchmarks scripts
	$(BIN)/mypy

test: $(STAMP) lint
	PYTHONHASHSEED=0 $(BIN)/pytest -q

clean:
	rm -rf $(VENV)
