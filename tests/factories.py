"""Synthetic expert data for tests: no files, no downloads, fully seeded."""

from __future__ import annotations

import numpy as np

from sd2ail_reward.config import LearnerConfig, preset, replace
from sd2ail_reward.demoset import DemoSet

OBS_DIM, ACT_DIM = 3, 1


def expert_policy(obs_BO: np.ndarray) -> np.ndarray:
    """A smooth deterministic 'expert': the action is a fixed function of the observation."""
    return np.tanh(obs_BO[:, :1] - 0.5 * obs_BO[:, 1:2]).astype(np.float32) * 2.0


def make_demos(
    n_episodes: int = 2, steps: int = 200, seed: int = 0, env_id: str = "Pendulum-v1"
) -> DemoSet:
    """Pendulum-shaped (3-d obs, 1-d action in [-2, 2]) demos from `expert_policy`."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(0.0, 1.0, (n_episodes * steps, OBS_DIM)).astype(np.float32)
    act = expert_policy(obs)
    next_obs = (obs + 0.1 * rng.normal(size=obs.shape)).astype(np.float32)
    rows = n_episodes * steps
    return DemoSet(
        obs=obs,
        action=act,
        next_obs=next_obs,
        reward=np.zeros(rows, np.float32),
        terminated=np.zeros(rows, bool),
        truncated=np.zeros(rows, bool),
        episode_ends=np.arange(1, n_episodes + 1, dtype=np.int64) * steps,
        reset_seeds=np.arange(n_episodes, dtype=np.int64),
        attrs={"env_id": env_id, "action_low": [-2.0], "action_high": [2.0]},
    )


def agent_batch(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Agent-like transitions: same states, uniformly random actions."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(0.0, 1.0, (n, OBS_DIM)).astype(np.float32)
    act = rng.uniform(-2.0, 2.0, (n, ACT_DIM)).astype(np.float32)
    return obs, act, obs.copy()


def small_config(algo: str = "sd2ail", **changes: object) -> LearnerConfig:
    """Pendulum preset shrunk for fast tests."""
    base = preset("pendulum", algo)  # type: ignore[arg-type]
    disc = replace_nested(base, "discriminator", expert_batch=64, agent_batch=64, lr=1e-3)
    diff = replace_nested(disc, "diffusion", hidden_dim=64)
    synth = replace_nested(diff, "synthetic", candidates_per_update=32, refresh_every=10)
    return replace(synth, min_agent_size=64, agent_capacity=10_000, **changes)


def replace_nested(config: LearnerConfig, part: str, **changes: object) -> LearnerConfig:
    import dataclasses

    return replace(config, **{part: dataclasses.replace(getattr(config, part), **changes)})
