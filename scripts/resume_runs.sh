#!/usr/bin/env bash
# Start of a session: resume every unfinished training run of the evidence grids, in the
# background (finished runs are skipped, started ones resume from their checkpoints).
# Two lanes, one run each at a time, so that the long Hopper imitation runs never hold both
# cores: lane 1 the Hopper evidence and its checks, then the Hopper ablation; lane 2 the new
# tasks' experts (recorded and verified as each finishes), then the Pendulum grids. A run
# locked by the other lane is left to it. Runs live in $SD2AIL_GRID_ROOT (default
# ~/sd2ail-runs/grid); the log goes beside them.
set -euo pipefail
cd "$(dirname "$0")/.."
root="${SD2AIL_GRID_ROOT:-$HOME/sd2ail-runs/grid}"
mkdir -p "$root"
lane() {
    nohup .venv/bin/python benchmarks/grid.py run "$@" --parallel 1 >> "$root/../grid.log" 2>&1 &
    echo "grid lane started (pid $!): $*"
}
lane hopper-evidence hopper-recipe-check hopper-ablation
lane experts pendulum-ablation pendulum-ci
echo "log: $root/../grid.log"
