"""What the learned reward and the critic say about recent training, logged at every
evaluation beside the true return."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from tianshou.algorithm import SAC
from tianshou.algorithm.modelfree.sac import SACPolicy
from tianshou.data import ReplayBuffer

from agents.critic_check import critic_value_check
from sd2ail_reward.client import RewardClient
from sd2ail_reward.metrics import pearson

log = logging.getLogger("sd2ail.train")


def reward_correlation(
    buffer: ReplayBuffer, client: RewardClient, policy: SACPolicy, n: int = 5000
) -> float:
    """Pearson correlation of the current learned reward and the env's reward over the last
    `n` training transitions (the paper reports 90.1% on Hopper)."""
    size = len(buffer)
    if size < 2:
        return float("nan")
    idx = (int(buffer.last_index[0]) - np.arange(min(n, size))) % buffer.maxsize
    batch: Any = buffer[idx]
    env_act = policy.map_action(np.asarray(batch.act))  # the buffer holds [-1, 1] actions
    learned = client.reward(np.asarray(batch.obs), env_act, np.asarray(batch.obs_next))
    return pearson(learned, np.asarray(batch.info["env_reward"], np.float64))


def training_diagnostics(
    algorithm: SAC, buffer: ReplayBuffer, client: RewardClient | None
) -> dict[str, float]:
    """What the learned reward and the critic say about recent training: the reward's
    correlation with the env's, and the critic's Q beside the discounted learned return the
    last finished training episode actually earned (`agents/critic_check.py`). On the env's
    reward (no client) the critic is judged against the env's return."""
    if client is None:
        critic_q, env_return = critic_value_check(
            (algorithm.critic, algorithm.critic2), buffer, None, algorithm.gamma
        )
        return {"reward_env_corr": float("nan"), "critic_q": critic_q, "learned_return": env_return}

    def env_space_reward(obs: Any, act: Any, obs_next: Any) -> np.ndarray:
        return client.reward(obs, algorithm.policy.map_action(act), obs_next)

    critic_q, learned_return = critic_value_check(
        (algorithm.critic, algorithm.critic2), buffer, env_space_reward, algorithm.gamma
    )
    return {
        "reward_env_corr": reward_correlation(buffer, client, algorithm.policy),
        "critic_q": critic_q,
        "learned_return": learned_return,
    }
