#!/usr/bin/env bash
# Stop the evidence grids cleanly (for a quiet machine: timing benchmarks, CI): the grid
# runners first, so that they start nothing new, then each of their training runs with
# SIGTERM, on which `train` checkpoints and exits. `scripts/resume_runs.sh` continues them.
# Then the carries of the unfinished SAC runs (SAC's newest checkpoint, and for an imitation
# run its reward server's generation paired with it) are written into benchmarks/results/carry/
# (commit them with the archive, `benchmarks/runs_csv.py`): the next session's machine starts
# without this one's grid root, and goes on from them.
set -euo pipefail
cd "$(dirname "$0")/.."
root="${SD2AIL_GRID_ROOT:-$HOME/sd2ail-runs/grid}"
carry() { SD2AIL_GRID_ROOT="$root" .venv/bin/python benchmarks/grid.py carry; }
pkill -TERM -f "benchmarks/grid.py run" || true
pids="$(pgrep -f "sd2ail_reward.cli train .*--run-dir $root/" || true)"
[ -z "$pids" ] && { echo "no grid runs were training"; carry; exit 0; }
kill -TERM $pids
for _ in $(seq 120); do
    alive=""
    for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive="$alive $pid"; done
    [ -z "$alive" ] && { echo "stopped:$pids"; carry; exit 0; }
    sleep 1
done
echo "still running after 120 s:$alive" >&2
exit 1
