"""Learning, end to end: `sd2ail-reward train` (Tianshou SAC) through a real reward server
subprocess and `SD2AILRewardWrapper` learns Pendulum-v1 from ONE expert demonstration, and the
same run with the discriminator frozen at initialisation does not.

Pendulum never terminates, so a positive reward such as -log(1 - D) cannot be earned by merely
surviving: a rising true return here comes from imitating the demonstration. The demo is store
episode 6, a full swing-up from near the bottom (episode 0 starts upright and shows none).

The settings below are the CI budget, checked on several seeds (see the README): a 2 x 128 SAC,
a 3 x 64 denoiser, 128 expert + 128 agent + 896 pseudo-expert rows per discriminator update and
128 candidates per update (the paper's Hopper settings: 2 x 256, 3 x 256, 256 + 256 + 1792,
256), so that a run fits a few minutes of a 2-core CPU. Everything else is the main job's
default: one discriminator update per transition, batches relabelled at SAC update time.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agents.recipes import PENDULUM_CI_FLAGS

REPO = Path(__file__).resolve().parents[1]
TARGET = -300.0
"""The issue's bar: the expert scores about -150, a policy that never swings up below -700."""
BUDGET_STEPS = 15_000
"""Calibration with training actions sampled from SAC's policy (`benchmarks/grid.py run
pendulum-ci`, 2026-11-30): seeds 0, 1, 2 first reached the target at 11k, 4k and 4k env
steps (best -162, -142, -133; results/runs.csv, rows pendulum-ci-*)."""
FROZEN_STEPS = 8_000
"""The frozen control's budget: in the same calibration its best over 8k steps was -1127,
-1145 and -1145 (seeds 0, 1, 2), so a shorter run keeps the suite's time down without
flattering it."""
SEED = "1"

PENDULUM_CI = [*PENDULUM_CI_FLAGS, "--no-progress"]


def train(run_dir: Path, *extra: str) -> list[dict[str, float]]:
    proc = subprocess.run(
        [sys.executable, "-m", "sd2ail_reward.cli", "train", *PENDULUM_CI, *extra],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with (run_dir / "metrics.csv").open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sac_learns_pendulum_from_one_demonstration(tmp_path: Path) -> None:
    run_dir = tmp_path / "learn"
    rows = train(
        run_dir, "--seed", SEED, "--steps", str(BUDGET_STEPS), "--run-dir", str(run_dir),
        "--target-return", str(TARGET),
    )  # fmt: skip
    returns = [r["eval_return_mean"] for r in rows]
    assert max(returns) >= TARGET, f"true eval returns {returns} never reached {TARGET}"
    assert rows[-1]["env_step"] <= BUDGET_STEPS
    # the learned reward tracks the env's reward and D tells the expert from the agent
    last = rows[-1]
    assert last["reward_env_corr"] > 0.2, last
    assert last["d_expert"] > last["d_agent"], last
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_return"] >= TARGET


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_frozen_discriminator_does_not_learn_pendulum(tmp_path: Path) -> None:
    run_dir = tmp_path / "frozen"
    rows = train(
        run_dir, "--seed", SEED, "--steps", str(FROZEN_STEPS), "--run-dir", str(run_dir),
        "--reward", "frozen", "--target-return", str(TARGET),
    )  # fmt: skip
    returns = [r["eval_return_mean"] for r in rows]
    assert rows[-1]["env_step"] == FROZEN_STEPS, "the frozen run should use the whole budget"
    assert max(returns) < TARGET, f"a frozen discriminator reached {max(returns)}: {returns}"
    assert rows[-1]["disc_updates"] == 0
