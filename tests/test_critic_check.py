"""The critic-versus-realised-return check that train logs as critic_q / learned_return."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from tianshou.data import Batch, ReplayBuffer

from agents.critic_check import (
    critic_value_check,
    discounted_returns,
    last_finished_episode,
)


def fill(buffer: ReplayBuffer, lengths: list[int], terminated_last: bool) -> None:
    """Episodes of the given lengths, obs[0] counting the transitions written so far; the
    final episode ends terminated or truncated as asked, the others truncated."""
    count = 0
    for e, length in enumerate(lengths):
        for t in range(length):
            end = t == length - 1
            term = end and e == len(lengths) - 1 and terminated_last
            buffer.add(Batch(
                obs=np.array([count, 0.0]), act=np.array([0.5]), rew=0.0,
                terminated=term, truncated=end and not term,
                obs_next=np.array([count + 1, 0.0]), info={},
            ))  # fmt: skip
            count += 1


class ConstantCritic(torch.nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return torch.full((obs.shape[0], 1), self.value)


def test_discounted_returns_match_the_definition() -> None:
    reward = np.array([1.0, 2.0, 3.0])
    expected = [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0]
    np.testing.assert_allclose(discounted_returns(reward, 0.5), expected)


def test_last_finished_episode_skips_the_running_one_and_survives_wraparound() -> None:
    buffer = ReplayBuffer(20)
    fill(buffer, [6, 5, 4], terminated_last=True)  # 15 transitions
    buffer.add(Batch(  # an episode still running
        obs=np.array([99.0, 0.0]), act=np.array([0.5]), rew=0.0, terminated=False,
        truncated=False, obs_next=np.array([100.0, 0.0]), info={},
    ))  # fmt: skip
    found = last_finished_episode(buffer)
    assert found is not None
    episode, terminated = found
    assert terminated and list(buffer.obs[episode][:, 0]) == [11, 12, 13, 14]

    wrapped = ReplayBuffer(8)
    fill(wrapped, [5, 5], terminated_last=False)  # 10 transitions: slots wrap around
    found = last_finished_episode(wrapped)
    assert found is not None
    episode, terminated = found
    assert not terminated and list(wrapped.obs[episode][:, 0]) == [5, 6, 7, 8, 9]

    only_running = ReplayBuffer(4)
    fill(only_running, [6], terminated_last=False)  # the episode's start was overwritten
    only_running.add(Batch(
        obs=np.zeros(2), act=np.array([0.5]), rew=0.0, terminated=False, truncated=False,
        obs_next=np.zeros(2), info={},
    ))  # fmt: skip
    assert last_finished_episode(only_running) is None


def test_critic_value_check_compares_q_with_the_return_that_followed() -> None:
    gamma = 0.9
    buffer = ReplayBuffer(100)
    fill(buffer, [7, 10], terminated_last=True)
    seen_act: list[np.ndarray] = []

    def reward_fn(obs: Any, act: Any, obs_next: Any) -> np.ndarray:
        seen_act.append(np.asarray(act))
        return np.ones(len(obs), np.float32)

    critics = (ConstantCritic(12.0), ConstantCritic(8.0))
    q, realised = critic_value_check(critics, buffer, reward_fn, gamma)
    assert q == pytest.approx(8.0)  # the smaller of the twin critics, as SAC's target uses
    expected = np.mean([(1 - gamma ** (10 - t)) / (1 - gamma) for t in range(10)])
    assert realised == pytest.approx(expected)
    assert len(seen_act) == 1 and seen_act[0].shape == (10, 1)

    # a truncated episode is judged only where the unobserved tail weighs <= 1%:
    # gamma 0.5 -> the last 7 steps are left out of a 10-step episode
    truncated = ReplayBuffer(100)
    fill(truncated, [10], terminated_last=False)
    q, realised = critic_value_check(critics, truncated, reward_fn, 0.5)
    assert realised == pytest.approx(np.mean([(1 - 0.5 ** (10 - t)) / 0.5 for t in range(3)]))
    # too short to judge at all, and nothing finished yet
    short = ReplayBuffer(100)
    fill(short, [5], terminated_last=False)
    assert np.isnan(critic_value_check(critics, short, reward_fn, 0.5)[0])
    assert np.isnan(critic_value_check(critics, ReplayBuffer(10), reward_fn, 0.5)[1])
