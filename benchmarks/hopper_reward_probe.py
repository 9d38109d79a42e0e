"""Does a trained discriminator rank Hopper behaviour the right way?

    python benchmarks/hopper_reward_probe.py RUN_DIR [--name TAG]  # a `sd2ail-reward train` run dir

Loads the run's latest server checkpoint (the discriminator and the demo episodes it was
trained on) and its `best_actor.pt`, rolls out 1000 steps without termination for: the expert
that made `demos/Hopper-v5.zarr` (deterministic, then with N(0, sigma) action noise), the run's
best actor, and a uniform random policy, and reports the learned reward per step before and
after each rollout first becomes unhealthy (falls), and the learned return before the fall (what
an agent whose episodes end at the fall collects). Writes
benchmarks/results/hopper_reward_probe[_TAG].csv. Seconds on one core.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

Policy = Callable[[np.ndarray], np.ndarray] | None


def rollout(
    policy: Policy, model: object, noise: float, rng: np.random.Generator, seed: int
) -> dict[str, float]:
    import gymnasium as gym

    env = gym.make("Hopper-v5", terminate_when_unhealthy=False)
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    obs_rows, act_rows, next_rows, healthy, env_rewards = [], [], [], [], []
    for _ in range(1000):
        act = env.action_space.sample() if policy is None else policy(obs)
        if noise:
            act = np.clip(act + noise * rng.standard_normal(act.shape), -1.0, 1.0)
        next_obs, env_reward, _, _, _ = env.step(act)
        obs_rows.append(obs)
        act_rows.append(act)
        next_rows.append(next_obs)
        healthy.append(bool(env.unwrapped.is_healthy))  # type: ignore[attr-defined]
        env_rewards.append(float(env_reward))
        obs = next_obs
    env.close()
    reward = model.reward(  # type: ignore[attr-defined]
        np.asarray(obs_rows, np.float32),
        np.asarray(act_rows, np.float32),
        np.asarray(next_rows, np.float32),
    )
    fall = int(np.argmin(healthy)) if not all(healthy) else 1000
    return {
        "falls_at_step": fall,
        "env_return_before_fall": round(float(np.sum(env_rewards[:fall])), 1),
        "reward_per_step_before_fall": round(float(reward[:fall].mean()), 3) if fall else np.nan,
        "learned_return_before_fall": round(float(reward[:fall].sum()), 1),
        "reward_per_step_after_fall": round(float(reward[fall:].mean()), 3)
        if fall < 1000
        else np.nan,
    }


def load_frozen_learner(checkpoint: str) -> Any:
    """The latest server checkpoint's learner, on the demo episodes it was trained on."""
    from sd2ail_reward.checkpoint import CheckpointStore
    from sd2ail_reward.demos import read_demos
    from sd2ail_reward.learner import RewardLearner

    ckpt = CheckpointStore(checkpoint).load_latest()
    demo_meta = ckpt.meta["demos"]
    demos = read_demos(REPO / demo_meta["path"], episodes=demo_meta["selected_episodes"])
    learner = RewardLearner(RewardLearner.config_from_state(ckpt.state), demos, seed=0)
    learner.load_state_dict(ckpt.state)
    return learner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--name", default="", help="suffix of the CSV's name (one per run)")
    ns = parser.parse_args()

    import torch

    from agents.actors import deterministic_policy_fn, policy_from_spec

    torch.set_num_threads(1)
    learner = load_frozen_learner(str(ns.run_dir / "server"))
    spec = json.loads((REPO / "demos" / "Hopper-v5.expert.json").read_text())
    expert = deterministic_policy_fn(
        policy_from_spec(spec, torch.load(REPO / "demos" / "Hopper-v5.expert.pt"))
    )
    agent = deterministic_policy_fn(
        policy_from_spec(spec, torch.load(ns.run_dir / "best_actor.pt"))
    )
    rng = np.random.default_rng(ns.seed)
    cases: list[tuple[str, Policy, float]] = [
        ("expert", expert, 0.0),
        ("expert + N(0, 0.3) action noise", expert, 0.3),
        ("expert + N(0, 0.6) action noise", expert, 0.6),
        ("run's best actor", agent, 0.0),
        ("uniform random", None, 0.0),
    ]
    rows = []
    for name, policy, noise in cases:
        row = {"policy": name, **rollout(policy, learner, noise, rng, ns.seed)}
        rows.append(row)
        print(row, flush=True)
    ns.out.mkdir(parents=True, exist_ok=True)
    path = ns.out / f"hopper_reward_probe{'_' + ns.name if ns.name else ''}.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path} (discriminator of {ns.run_dir}, {learner.n_updates} updates)")


if __name__ == "__main__":
    main()
