# The two commands a newcomer needs: `make run` (the main job) and `make test` (the test suite).
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint venv clean

# The main job: SAC learns Hopper-v5 from ONE expert demonstration through a local reward
# server, never seeing the env's reward: the recipe measured to reach the expert's return within
# 100k env steps on two of two seeds (about 100 minutes on a 2-core CPU; resumable with
# `.venv/bin/sd2ail-reward train --resume --run-dir runs/sd2ail-Hopper-v5-seed0`). It is SD2AIL
# plus a BC start and TD3+BC's cloning term in SAC's actor loss (not in the paper), with one
# discriminator update per 4 env steps; the paper's algorithm alone:
# make run RUN_ARGS="--env Hopper-v5 --demos demos/Hopper-v5.zarr --num-demos 1 --steps 250000"
# A quick look instead: make run RUN_ARGS="--env Pendulum-v1 --demos demos/Pendulum-v1.zarr
# --demo-episodes 6 --steps 20000 --start-steps 1000 --chunk 200 --eval-every 2000"
RUN_ARGS ?= --env Hopper-v5 --demos demos/Hopper-v5.zarr --num-demos 1 --algo sd2ail \
	--steps 100000 --seed 0 --bc-init-epochs 20 --bc-weight 0.4 --eval-every 5000 \
	--server-arg=--updates-per-transition=0.25

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[agents,dev,sb3,minari,ray]"
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
