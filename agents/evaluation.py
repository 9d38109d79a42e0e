"""Evaluation on the env's TRUE reward: deterministic episodes on unwrapped envs, the distance
each travelled (a Hopper that stands still scores ~1000), and the learning-curve figure."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
from tianshou.data import Collector, CollectStats
from tianshou.env import DummyVectorEnv

from agents.recipes import TrainArgs
from sd2ail_reward.demos import DemoSet


class Evaluation(NamedTuple):
    returns: np.ndarray
    """True return of each episode, float64."""
    lengths: np.ndarray
    """Steps of each episode: fewer than the env's time limit means it terminated (fell)."""

    def fallen(self, env_id: str) -> int:
        """Episodes that ended before the env's time limit (0 for an env without one)."""
        limit = gym.spec(env_id).max_episode_steps
        return 0 if limit is None else int((self.lengths < limit).sum())


def evaluate(collector: Collector[CollectStats], envs: DummyVectorEnv, seed: int) -> Evaluation:
    """One deterministic episode per eval env, with the env's true reward."""
    envs.seed(seed)
    collector.reset()
    stats = collector.collect(n_episode=len(envs))
    return Evaluation(
        np.asarray(stats.returns, dtype=np.float64), np.asarray(stats.lens, dtype=np.int64)
    )


class DistanceTracker(gym.Wrapper[Any, Any, Any, Any]):
    """Records how far each finished episode moved along x, from the `x_position` that MuJoCo
    locomotion envs report in info (NaN for envs that do not). The true return alone cannot
    tell a Hopper that hops from one that stands still for 1000 steps collecting the healthy
    bonus (~1000): a positive learned reward on episodes that end on a fall breeds the latter.
    """

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        self.start_x = self.last_x = float("nan")
        self.finished: list[float] = []

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self.start_x = self.last_x = float(info.get("x_position", float("nan")))
        return obs, info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.last_x = float(info.get("x_position", float("nan")))
        if terminated or truncated:
            self.finished.append(self.last_x - self.start_x)
        return obs, reward, terminated, truncated, info


def make_eval_envs(args: TrainArgs) -> tuple[DummyVectorEnv, list[DistanceTracker]]:
    """Unwrapped (true-reward) evaluation envs, with a handle on each one's distance tracker
    (DummyVectorEnv keeps the very env objects its factories return)."""
    trackers = [DistanceTracker(gym.make(args.env)) for _ in range(args.eval_episodes)]

    def factory(env: gym.Env[Any, Any]) -> Callable[[], gym.Env[Any, Any]]:
        return lambda: env

    return DummyVectorEnv([factory(t) for t in trackers]), trackers


def mean_travelled(trackers: Sequence[DistanceTracker]) -> float:
    """Mean x distance of the episodes finished since the last call (NaN if none has x)."""
    distances = [d for t in trackers for d in t.finished]
    for tracker in trackers:
        tracker.finished.clear()
    return float(np.mean(distances)) if distances else float("nan")


def expert_return(demos: DemoSet) -> float:
    """Mean return of the expert episodes in use (the reference line of the plots)."""
    return float(np.mean(demos.episode_returns))


def write_learning_curve(run_dir: Path, expert: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    if not rows:
        return
    steps = [int(r["env_step"]) for r in rows]
    mean = np.array([float(r["eval_return_mean"]) for r in rows])
    std = np.array([float(r["eval_return_std"]) for r in rows])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, mean, label="agent (true return)")
    ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    if np.isfinite(expert):  # no demos: an expert in training
        ax.axhline(expert, color="k", ls="--", label=f"expert demos ({expert:.0f})")
    ax.set_xlabel("env steps")
    ax.set_ylabel("evaluation return")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "learning_curve.png", dpi=120)
    plt.close(fig)
