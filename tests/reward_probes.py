"""Does a learned reward prefer the expert? Probes the SB3 and plain-torch agent tests share."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sd2ail_reward.client import RewardClient
from sd2ail_reward.demos import read_demos

DEMOS = Path(__file__).resolve().parents[1] / "demos" / "Pendulum-v1.zarr"


def probe_rows(episodes: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expert (obs, action) rows of `episodes`, and uniform random actions at the same states."""
    demos = read_demos(DEMOS, episodes=episodes)
    rng = np.random.default_rng(0)
    random_act = rng.uniform(-2.0, 2.0, demos.action.shape).astype(np.float32)
    return demos.obs, demos.action, random_act


def expert_margin(client: RewardClient, rows: tuple[np.ndarray, ...]) -> float:
    """Mean learned reward of the expert's actions minus that of random actions, same states."""
    obs, expert_act, random_act = rows
    return float(client.reward(obs, expert_act).mean() - client.reward(obs, random_act).mean())
