#!/usr/bin/env bash
# Start of a session: resume every unfinished training run of the evidence grids, in the
# background (finished runs are skipped, started ones resume from their checkpoints).
# Two lanes, one run each at a time. Both start on the Hopper expert-recipe runs (SD2AIL and
# DiffAIL from one demo: they decide `make run`) and the Hopper ablation (with the same
# recipe); then lane 1 the experts the other lane does not hold, the reference-recipe checks
# and the reference-recipe evidence; lane 2 the bf16 learning-curve checks (issue "Training cost"),
# the new tasks' experts (recorded and verified as each finishes: their stores gate the new
# tasks' runs), a first SD2AIL run on each new task whose demo store is committed, the
# Pendulum ablation, then the Pendulum CI calibration. A run locked by the other lane is left
# to it. Runs live in $SD2AIL_GRID_ROOT (default
# ~/sd2ail-runs/grid); the log goes beside them.
#
# The runs execute the code of a detached git worktree at this checkout's HEAD (../runner
# beside it, refreshed here), not of the checkout itself, so that editing the checkout while
# runs go cannot break a run that starts later; results are archived from the checkout with
# `python benchmarks/runs_csv.py`.
set -euo pipefail
cd "$(dirname "$0")/.."
make -s venv  # a new machine has no .venv: the lanes would fail at once
repo="$(pwd)"
python="$repo/.venv/bin/python"
root="${SD2AIL_GRID_ROOT:-$HOME/sd2ail-runs/grid}"
tree="$(dirname "$repo")/runner"
mkdir -p "$root"
head="$(git rev-parse HEAD)"
# a worktree of this clone is moved to HEAD (its archive copies discarded); anything else
# there (a previous session's, whose clone is gone) is replaced
if ! git -C "$tree" checkout -q -f --detach "$head" 2>/dev/null; then
    rm -rf "$tree"
    git worktree prune
    git worktree add -q --detach "$tree" "$head"
fi
echo "runs execute $tree at $(git -C "$tree" rev-parse --short HEAD)"
# Every SAC run, imitation runs with their reward server's state, is carried to the next
# machine (`grid.py carry` at the session's end); only BC runs (minutes) wait, after a lane's
# first 20 minutes, until nothing else is left.
lane() {
    (cd "$tree" && SD2AIL_GRID_ROOT="$root" nohup "$python" benchmarks/grid.py run "$@" \
        --parallel 1 --uncarried-start-within 20 >> "$root/../grid.log" 2>&1 &
     echo "grid lane started (pid $!): $*")
}
# experts before the reference-recipe checks: late in a sitting the lane should take an
# expert (issue 17 waits on them), not a 100k-step recipe check
lane hopper-expert-recipe hopper-ablation experts hopper-recipe-check hopper-evidence
# every expert and new task's first run is done (2026-12-02): this lane takes the rest of
# the Hopper ablation too (the other lane's run is locked, so it takes the next), then the
# HalfCheetah discnorm check in new-tasks
lane hopper-expert-recipe hopper-ablation hopper-cost experts new-tasks pendulum-ablation pendulum-ci
echo "log: $root/../grid.log"
