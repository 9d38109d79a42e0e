#!/usr/bin/env bash
# Start of a session: resume every unfinished training run of the evidence grids, in the
# background, in order (finished runs are skipped, started ones resume from their checkpoints).
# Runs live in $SD2AIL_GRID_ROOT (default ~/sd2ail-runs/grid); the log goes beside them.
set -euo pipefail
cd "$(dirname "$0")/.."
root="${SD2AIL_GRID_ROOT:-$HOME/sd2ail-runs/grid}"
mkdir -p "$root"
nohup .venv/bin/python benchmarks/grid.py run hopper-evidence hopper-recipe-check pendulum-ci pendulum-ablation \
    hopper-ablation experts \
    --parallel "${PARALLEL:-2}" >> "$root/../grid.log" 2>&1 &
echo "grid runner started (pid $!), log: $root/../grid.log"
