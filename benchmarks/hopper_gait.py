"""Does a Hopper policy hop, or only stand? Its true return cannot tell at ~1000.

Hopper-v5 pays 1 per step for staying healthy, so a policy that stands still for the whole
episode scores ~1000 without moving. This script rolls out each run's `best_actor.pt` and the
expert that made `demos/Hopper-v5.zarr` (deterministic, with termination, as the evaluations of
`sd2ail-reward train`) and splits the return into its healthy and forward parts, with the
distance travelled and the torso's height variation:

    python benchmarks/hopper_gait.py RUN_DIR [RUN_DIR ...] [--episodes 10]

Writes `benchmarks/results/hopper_gait.csv` (one row per policy, means over episodes).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FIELDS = (
    "policy",
    "episodes",
    "steps",
    "true_return",
    "healthy_reward",
    "forward_reward",
    "x_travelled",
    "torso_height_std",
)


def rollout(policy: Any, seed: int) -> dict[str, float]:
    env = gym.make("Hopper-v5")
    obs, _ = env.reset(seed=seed)
    data = env.unwrapped.data  # type: ignore[attr-defined]
    x_start = float(data.qpos[0])
    totals = {"true_return": 0.0, "healthy_reward": 0.0, "forward_reward": 0.0}
    heights, steps, done = [], 0, False
    while not done:
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        totals["true_return"] += float(reward)
        totals["healthy_reward"] += float(info["reward_survive"])
        totals["forward_reward"] += float(info["reward_forward"])
        heights.append(float(data.qpos[1]))
        steps += 1
        done = terminated or truncated
    env.close()
    return {
        "steps": float(steps),
        **totals,
        "x_travelled": float(data.qpos[0]) - x_start,
        "torso_height_std": float(np.std(heights)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", type=Path, nargs="*", help="runs of `sd2ail-reward train`")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=10_000, help="reset seed of episode 0")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ns = parser.parse_args()

    import torch

    from agents.actors import deterministic_policy_fn, policy_from_spec

    torch.set_num_threads(1)
    spec = json.loads((REPO / "demos" / "Hopper-v5.expert.json").read_text())
    policies = [("expert (demos/Hopper-v5.expert.pt)", REPO / "demos" / "Hopper-v5.expert.pt")]
    policies += [(f"{d.name}/best_actor.pt", d / "best_actor.pt") for d in ns.run_dirs]
    rows = []
    for name, weights in policies:
        policy = deterministic_policy_fn(policy_from_spec(spec, torch.load(weights)))
        episodes = [rollout(policy, ns.seed + i) for i in range(ns.episodes)]
        row: dict[str, Any] = {"policy": name, "episodes": ns.episodes}
        for key in FIELDS[2:]:
            row[key] = round(float(np.mean([e[key] for e in episodes])), 3)
        rows.append(row)
        print(row, flush=True)
    ns.out.mkdir(parents=True, exist_ok=True)
    with (ns.out / "hopper_gait.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
