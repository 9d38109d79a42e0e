"""SAC explores when it trains and acts deterministically when it is evaluated.

Tianshou 2.0.1's `SACPolicy` returns its mean action `tanh(mu)` outside
`policy_within_training_step`; a loop that collects outside it never explores. These run the
real `train` loop and check the actions it stored against the actor's deterministic ones.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
PENDULUM = REPO / "demos" / "Pendulum-v1.zarr"
WARM_UP, STEPS = 300, 600


def train_with_a_fixed_policy(run_dir: Path) -> None:
    """`--lr 0`: no optimiser moves the actor, so the actor saved at the end is the one that
    chose every post-warm-up action."""
    proc = subprocess.run(
        [
            sys.executable, "-m", "sd2ail_reward.cli", "train", "--reward", "env",
            "--env", "Pendulum-v1", "--demos", str(PENDULUM), "--num-demos", "1",
            "--steps", str(STEPS), "--start-steps", str(WARM_UP), "--chunk", "100",
            "--eval-every", str(STEPS), "--eval-episodes", "2", "--hidden-sizes", "32", "32",
            "--batch-size", "64", "--lr", "0", "--run-dir", str(run_dir), "--no-progress",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def load_run(run_dir: Path) -> tuple[Any, dict[str, np.ndarray]]:
    from agents.checkpoints import sac_checkpoint_store
    from agents.networks import box_spaces
    from agents.recipes import TrainArgs
    from agents.sac import make_sac

    checkpoint = sac_checkpoint_store(run_dir).load_latest()
    args = TrainArgs(env="Pendulum-v1", hidden_sizes=(32, 32), lr=0.0)
    algorithm = make_sac(args, *box_spaces("Pendulum-v1"), None)
    algorithm.load_state_dict(checkpoint.state["algorithm"])
    buffer = {k: v.numpy() for k, v in checkpoint.state["buffer"].items()}
    return algorithm, buffer


def deterministic_action(algorithm: Any, obs_BO: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        (mu_BA, _), _ = algorithm.policy.actor(obs_BO)
    return np.asarray(torch.tanh(mu_BA))


class ActionRecorder(gym.Wrapper[Any, Any, Any, Any]):
    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        self.pairs: list[tuple[np.ndarray, np.ndarray]] = []
        self.obs: np.ndarray | None = None

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self.obs, info = self.env.reset(**kwargs)
        return self.obs, info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        assert self.obs is not None
        self.pairs.append((np.array(self.obs), np.array(action)))
        self.obs, reward, terminated, truncated, info = self.env.step(action)
        return self.obs, reward, terminated, truncated, info


def test_training_samples_actions_and_evaluation_takes_the_mean(tmp_path: Path) -> None:
    from tianshou.data import Collector, CollectStats
    from tianshou.env import DummyVectorEnv

    from agents.evaluation import evaluate

    run_dir = tmp_path / "run"
    train_with_a_fixed_policy(run_dir)
    algorithm, buffer = load_run(run_dir)
    stored_act = buffer["data/act"][WARM_UP:STEPS]
    assert len(stored_act) == STEPS - WARM_UP
    mean_act = deterministic_action(algorithm, buffer["data/obs"][WARM_UP:STEPS])
    gap = np.abs(stored_act - mean_act).max(axis=1)
    # sigma ~ 1 at initialisation: a sampled action is off the mean by far more than rounding
    assert np.median(gap) > 0.1, f"training actions equal tanh(mu): {np.median(gap)}"
    assert (gap > 1e-3).mean() > 0.95

    # evaluation, through the loop's own `evaluate`, acts with tanh(mu) mapped to the bounds
    recorders = [ActionRecorder(gym.make("Pendulum-v1")) for _ in range(2)]
    envs = DummyVectorEnv([lambda r=r: r for r in recorders])
    evaluate(Collector[CollectStats](algorithm, envs), envs, seed=0)
    obs_BO = np.stack([o for r in recorders for o, _ in r.pairs])
    env_act_BA = np.stack([a for r in recorders for _, a in r.pairs])
    assert len(obs_BO) == 400  # two whole Pendulum episodes
    expected = algorithm.policy.map_action(deterministic_action(algorithm, obs_BO))
    np.testing.assert_allclose(env_act_BA, expected, atol=1e-5)
