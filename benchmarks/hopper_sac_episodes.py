"""Can the agent's SAC learn Hopper-v5 in our step budget, and does episode handling matter?

    python benchmarks/hopper_sac_episodes.py                         # true reward, ~25 min
    python benchmarks/hopper_sac_episodes.py --reward frozen \\
        --server-checkpoint RUN_DIR/server                           # a trained discriminator
    python benchmarks/hopper_sac_episodes.py --normalize-obs         # SAC on demo-normalised obs

Tianshou SAC with `sd2ail-reward train`'s settings (agents/sac.py `make_sac`: the reference's
lr 3e-4, Adam beta1 0.25, auto alpha from 0.2 with target entropy -|A|/2, 2 x 256), one update
per env step after 5000 random steps, in two arms run side by side (one process each):

- `fixed-length`: training episodes run the full 1000 steps (`terminate_when_unhealthy=False`),
  as the reference's `no_terminal` and `train`'s default;
- `terminating`: training episodes end when the hopper falls.

Evaluation is always the true return with termination (5 deterministic episodes every 5000
steps). `--normalize-obs` gives SAC's networks observations normalised with the mean and std of
the first demo episode of demos/Hopper-v5.zarr (the reference's `ScaledEnv`, `train`'s
`--normalize-obs`). `--reward true` trains on the env's reward, which separates the RL side from the
discriminator; `--reward frozen` trains on a learned reward held fixed (a server checkpoint's
discriminator, scored at step time in process), which asks whether SAC can climb that reward.
Writes benchmarks/results/hopper_sac_episodes_<reward>[_normobs].csv and .png.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import multiprocessing as mp
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ARMS = {"fixed-length": {"terminate_when_unhealthy": False}, "terminating": {}}


def run_arm(
    arm: str, reward: str, checkpoint: str | None, steps: int, seed: int, normalize_obs: bool
) -> list[dict]:
    import gymnasium as gym
    import torch
    from tianshou.algorithm.algorithm_base import policy_within_training_step
    from tianshou.data import Collector, CollectStats, ReplayBuffer
    from tianshou.env import DummyVectorEnv

    from agents.expert import evaluate
    from agents.sac import TrainArgs, box_spaces, make_sac, policy_obs_stats
    from sd2ail_reward.demos import read_demos
    from sd2ail_reward.wrapper import SD2AILRewardWrapper

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    env_kwargs: dict[str, Any] = ARMS[arm]
    learner = load_frozen_learner(checkpoint) if reward == "frozen" else None

    def make_train_env() -> gym.Env[Any, Any]:
        env = gym.make("Hopper-v5", **env_kwargs)
        if learner is None:
            return env
        return SD2AILRewardWrapper(env, reward=learner, push=False)

    train_envs = DummyVectorEnv([make_train_env])
    test_envs = DummyVectorEnv([lambda: gym.make("Hopper-v5") for _ in range(5)])
    train_envs.seed(seed)
    args = replace(TrainArgs(), seed=seed, normalize_obs=normalize_obs)
    obs_space, act_space = box_spaces("Hopper-v5")
    obs_stats = policy_obs_stats(
        args, read_demos(REPO / "demos" / "Hopper-v5.zarr", num_episodes=1)
    )
    algorithm = make_sac(args, obs_space, act_space, None, obs_stats)
    buffer = ReplayBuffer(steps)
    train_collector = Collector[CollectStats](algorithm, train_envs, buffer, exploration_noise=True)
    test_collector = Collector[CollectStats](algorithm, test_envs)
    train_collector.reset()
    rows, step, start = [], 0, time.time()
    while step < steps:
        warm_up = step < args.start_steps
        train_collector.collect(n_step=1000, random=warm_up)
        step += 1000
        if not warm_up:
            with policy_within_training_step(algorithm.policy):
                for _ in range(1000):
                    algorithm.update(buffer=buffer, sample_size=args.batch_size)
        if step % 5000 == 0:
            returns = evaluate(test_collector, test_envs, 100 + step)
            rows.append(
                {
                    "reward": reward,
                    "arm": arm,
                    "normalize_obs": normalize_obs,
                    "seed": seed,
                    "env_step": step,
                    "eval_return_mean": round(float(returns.mean()), 1),
                    "eval_return_std": round(float(returns.std()), 1),
                    "alpha": round(float(algorithm.alpha.value), 4),
                    "wall_s": round(time.time() - start, 1),
                }
            )
            print(rows[-1], flush=True)
    return rows


def load_frozen_learner(checkpoint: str | None) -> Any:
    """The latest server checkpoint's learner, on the demo episodes it was trained on."""
    from sd2ail_reward.checkpoint import CheckpointStore
    from sd2ail_reward.demos import read_demos
    from sd2ail_reward.learner import RewardLearner

    if checkpoint is None:
        raise SystemExit("--reward frozen needs --server-checkpoint RUN_DIR/server")
    ckpt = CheckpointStore(checkpoint).load_latest()
    demo_meta = ckpt.meta["demos"]
    demos = read_demos(REPO / demo_meta["path"], episodes=demo_meta["selected_episodes"])
    learner = RewardLearner(RewardLearner.config_from_state(ckpt.state), demos, seed=0)
    learner.load_state_dict(ckpt.state)
    return learner


def _arm_job(job: tuple[str, str, str | None, int, int, bool]) -> list[dict]:
    return run_arm(*job)


def plot(rows: list[dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in ARMS:
        for seed in sorted({r["seed"] for r in rows}):
            sel = [r for r in rows if r["arm"] == arm and r["seed"] == seed]
            ax.plot(
                [r["env_step"] for r in sel],
                [r["eval_return_mean"] for r in sel],
                marker="o",
                label=f"{arm} (seed {seed})",
            )
    ax.set_xlabel("env steps")
    ax.set_ylabel("true return (5 deterministic episodes)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reward", choices=["true", "frozen"], default="true")
    parser.add_argument("--server-checkpoint", default=None)
    parser.add_argument("--steps", type=int, default=30_000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--normalize-obs", action="store_true", help="SAC on demo-normalised obs")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ns = parser.parse_args()
    jobs = [
        (arm, ns.reward, ns.server_checkpoint, ns.steps, s, ns.normalize_obs)
        for s in ns.seeds
        for arm in ARMS
    ]
    with mp.get_context("spawn").Pool(min(len(jobs), 2)) as pool:
        rows = [row for arm_rows in pool.map(_arm_job, jobs) for row in arm_rows]
    ns.out.mkdir(parents=True, exist_ok=True)
    stem = ns.out / f"hopper_sac_episodes_{ns.reward}{'_normobs' if ns.normalize_obs else ''}"
    with stem.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    versions = ", ".join(
        f"{p} {importlib.metadata.version(p)}" for p in ("torch", "tianshou", "gymnasium", "mujoco")
    )
    title = f"SAC on Hopper-v5, {ns.reward} reward" + (
        ", normalised obs" if ns.normalize_obs else ""
    )
    plot(rows, stem.with_suffix(".png"), title)
    print(f"wrote {stem}.csv/.png; {platform.processor() or platform.machine()}; {versions}")


if __name__ == "__main__":
    main()
