"""Does SAC's critic believe what the agent actually earns?

The critic is trained on the learned reward by bootstrapping, so a bias it picks up on states
far from the data (a fallen Hopper lies 15-20 demo standard deviations away) is multiplied by
up to 1 / (1 - gamma) and never corrected by a terminal state in fixed-length episodes. This
compares, over the most recent finished training episode, the critic's Q(s_t, a_t) with the
discounted learned return that actually followed; a large positive gap is a critic that
overestimates. (SAC's soft Q also counts the entropy bonus, alpha x entropy per step, which
with the reference's target entropy -|A|/2 is small and negative.)
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tianshou.data import ReplayBuffer

TAIL_WEIGHT = 0.01
"""A truncated episode's steps count only where gamma^(steps left) <= this: the return beyond
the horizon, which was never observed, would otherwise be missing from the comparison."""


def discounted_returns(reward_T: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = sum_k gamma^k r_{t+k} up to the end of the episode."""
    out_T = np.empty(len(reward_T), np.float64)
    acc = 0.0
    for t in range(len(reward_T) - 1, -1, -1):
        acc = float(reward_T[t]) + gamma * acc
        out_T[t] = acc
    return out_T


def finished_episodes(buffer: ReplayBuffer, count: int) -> list[tuple[np.ndarray, bool]]:
    """Buffer indices of up to `count` most recent finished episodes, newest first, each
    oldest step first, with whether it terminated (rather than being truncated). Assumes one
    env writes the buffer, so an episode's transitions are contiguous."""
    size = len(buffer)
    if size == 0:
        return []
    newest_first = (int(buffer.last_index[0]) - np.arange(size)) % buffer.maxsize
    ends = [int(end) for end in np.flatnonzero(np.asarray(buffer.done)[newest_first])]
    if size < buffer.maxsize:  # nothing overwritten: the oldest episode starts at slot 0
        ends.append(size)
    out = []
    for start, stop in itertools.pairwise(ends[: count + 1]):
        episode = newest_first[start:stop][::-1]
        out.append((episode, bool(buffer.terminated[episode[-1]])))
    return out


def last_finished_episode(buffer: ReplayBuffer) -> tuple[np.ndarray, bool] | None:
    """The most recent finished episode (`finished_episodes`), or None if the buffer holds
    no whole one."""
    found = finished_episodes(buffer, 1)
    return found[0] if found else None


def judged_q_and_returns(
    critics: tuple[torch.nn.Module, torch.nn.Module],
    episode: Any,
    terminated: bool,
    reward_fn: Callable[..., np.ndarray] | None,
    gamma: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Per step of one episode (a Batch of obs, act, obs_next in buffer order): the twin
    critics' min Q and the discounted learned return that followed, for the steps that can be
    judged (all of a terminated episode; a truncated one's up to `TAIL_WEIGHT`)."""
    obs, act = np.asarray(episode.obs), np.asarray(episode.act)
    if reward_fn is None:  # the reward stored with each step (the env's, or step-time)
        reward_T = np.asarray(episode.rew, np.float64)
    else:
        reward_T = reward_fn(obs, act, np.asarray(episode.obs_next))
    returns_T = discounted_returns(reward_T, gamma)
    n_judged = len(obs)
    if not terminated:
        n_judged -= int(np.ceil(np.log(TAIL_WEIGHT) / np.log(gamma)))
    if n_judged <= 0:
        return np.empty(0), np.empty(0)
    obs_T = torch.as_tensor(obs[:n_judged], dtype=torch.float32)
    act_T = torch.as_tensor(act[:n_judged], dtype=torch.float32)  # the critics' own [-1, 1]
    with torch.no_grad():
        q1_T, q2_T = (critic(obs_T, act_T).flatten() for critic in critics)
    return torch.minimum(q1_T, q2_T).numpy().astype(np.float64), returns_T[:n_judged]


def critic_value_check(
    critics: tuple[torch.nn.Module, torch.nn.Module],
    buffer: ReplayBuffer,
    reward_fn: Callable[..., np.ndarray] | None,
    gamma: float,
) -> tuple[float, float]:
    """(mean min-Q, mean discounted learned return) over the last finished episode's judged
    steps; (nan, nan) when there is none long enough to judge."""
    found = last_finished_episode(buffer)
    if found is None:
        return float("nan"), float("nan")
    indices, terminated = found
    q_T, returns_T = judged_q_and_returns(critics, buffer[indices], terminated, reward_fn, gamma)
    if len(q_T) == 0:
        return float("nan"), float("nan")
    return float(q_T.mean()), float(returns_T.mean())
