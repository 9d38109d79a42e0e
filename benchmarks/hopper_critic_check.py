"""Does SAC's critic overestimate a fallen Hopper? Checked on a run's saved checkpoints.

For each SAC checkpoint of a `sd2ail-reward train` run on Hopper (fixed-length training
episodes), loads the critics, the replay buffer and the discriminator generation saved beside
it, and compares, over the last finished training episodes in the buffer, the critic's Q(s, a)
with the discounted learned return that actually followed (`agents/critic_check.py`), split
into the steps where the Hopper is healthy (z > 0.7 and |torso angle| < 0.2, the env's own
termination test) and those where it has fallen, with how far those states lie from the demo
(mean over steps of the largest |z-score| against the demo's obs mean and std):

    python benchmarks/hopper_critic_check.py RUN_DIR [--episodes 4]

Writes one row per checkpoint and state to `benchmarks/results/hopper_critic_check_<run>.csv`
(the run's checkpoints rotate, so rerunning later checks later ones).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FIELDS = (
    "run",
    "checkpoint",
    "state",
    "steps",
    "critic_q",
    "learned_return",
    "learned_reward_per_step",
    "max_abs_z",
)


def env_space_reward(learner: Any, policy: Any) -> Any:
    """The learned reward of buffer transitions, whose actions are the policy's [-1, 1]."""

    def reward_fn(obs: Any, act: Any, obs_next: Any) -> np.ndarray:
        return np.asarray(learner.reward(obs, policy.map_action(act), obs_next))

    return reward_fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ns = parser.parse_args()

    import torch
    from tianshou.data import ReplayBuffer

    from agents.checkpoints import restore_sac_checkpoint, sac_checkpoint_store
    from agents.critic_check import finished_episodes, judged_q_and_returns
    from agents.networks import box_spaces, policy_obs_stats
    from agents.recipes import TrainArgs
    from agents.sac import make_sac
    from sd2ail_reward.checkpoint import CheckpointStore
    from sd2ail_reward.demos import read_demos
    from sd2ail_reward.learner import RewardLearner

    torch.set_num_threads(1)
    saved = json.loads((ns.run_dir / "config.json").read_text())
    for key in ("hidden_sizes", "demo_episodes", "server_args"):
        if saved.get(key) is not None:
            saved[key] = tuple(saved[key])
    args = TrainArgs(**saved)
    demos = read_demos(REPO / args.demos, num_episodes=args.num_demos)
    obs_space, act_space = box_spaces(args.env)
    demo_mean, demo_std = demos.obs.mean(axis=0), demos.obs.std(axis=0)
    rows = []
    store = sac_checkpoint_store(ns.run_dir)
    for generation_dir in store.generations():
        checkpoint = store.load(generation_dir.name)
        sac = make_sac(args, obs_space, act_space, None, policy_obs_stats(args, demos))
        buffer = ReplayBuffer(args.buffer_size)
        state = restore_sac_checkpoint(checkpoint, sac, buffer)
        generation = CheckpointStore(ns.run_dir / "server").load(state.server_generation)
        learner = RewardLearner(RewardLearner.config_from_state(generation.state), demos)
        learner.load_state_dict(generation.state)

        reward_fn = env_space_reward(learner, sac.policy)
        by_state: dict[str, list[np.ndarray]] = {"healthy": [], "fallen": []}
        for indices, terminated in finished_episodes(buffer, ns.episodes):
            batch = buffer[indices]
            q_T, returns_T = judged_q_and_returns(
                (sac.critic, sac.critic2), batch, terminated, reward_fn, sac.gamma
            )
            obs = np.asarray(batch.obs)[: len(q_T)]
            reward = reward_fn(batch.obs, batch.act, batch.obs_next)[: len(q_T)]
            # how far the states lie from the demo, in the demo-normalised units SAC sees
            z = np.abs(obs - demo_mean) / (demo_std + np.finfo(np.float32).eps)
            healthy = (obs[:, 0] > 0.7) & (np.abs(obs[:, 1]) < 0.2)
            for name, mask in (("healthy", healthy), ("fallen", ~healthy)):
                by_state[name].append(
                    np.stack([q_T[mask], returns_T[mask], reward[mask], z[mask].max(axis=1)])
                )
        for name, parts in by_state.items():
            joined = np.concatenate(parts, axis=1) if parts else np.empty((4, 0))
            rows.append(
                {
                    "run": ns.run_dir.name,
                    "checkpoint": generation_dir.name,
                    "state": name,
                    "steps": joined.shape[1],
                    **{
                        key: round(float(joined[i].mean()), 3) if joined.shape[1] else "nan"
                        for i, key in enumerate(FIELDS[4:])
                    },
                }
            )
            print(rows[-1], flush=True)
    ns.out.mkdir(parents=True, exist_ok=True)
    with (ns.out / f"hopper_critic_check_{ns.run_dir.name}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
