"""Reward-quality figures of a run: the latest rows of the server's ring buffers, and the
Frechet distances that tell pseudo-experts near the expert from random pairs."""

from __future__ import annotations

import numpy as np
import pytest

from agents.plot import ServerRows, latest_of_ring, reward_quality


def test_latest_of_a_ring_is_oldest_first_across_the_wrap() -> None:
    # capacity 5 after rows 0..6 were written: slots hold 5, 6, 2, 3, 4; the next write is slot 2
    rows = np.array([5, 6, 2, 3, 4], dtype=float)[:, None] * np.ones((1, 2))
    assert latest_of_ring(rows, 5, 2, 3)[:, 0].tolist() == [4, 5, 6]
    assert latest_of_ring(rows, 5, 2, 9)[:, 0].tolist() == [2, 3, 4, 5, 6]
    # not yet wrapped: 3 rows held, the next write is slot 3
    assert latest_of_ring(rows[:3], 3, 3, 2)[:, 0].tolist() == [6, 2]
    assert latest_of_ring(rows, 0, 0, 4).shape == (0, 2)


def test_expert_like_pairs_are_nearer_the_expert_than_random_ones() -> None:
    rng = np.random.default_rng(0)
    expert = rng.normal(0, 1, (1000, 4))
    rows = ServerRows(
        expert=expert,
        pseudo=rng.normal(0, 1.2, (2000, 4)),
        agent_latest=expert[rng.integers(0, 1000, 2000)] + rng.normal(0, 0.05, (2000, 4)),
        agent_warmup=rng.uniform(-6, 6, (1000, 4)),
    )
    quality = reward_quality(rows)
    assert quality["frechet_agent_latest"] < quality["frechet_pseudo"]
    assert quality["frechet_pseudo"] < 0.1 * quality["frechet_random_warmup"]
    empty = ServerRows(expert, np.zeros((0, 4)), rows.agent_latest, np.zeros((0, 4)))
    assert np.isnan(reward_quality(empty)["frechet_pseudo"])
    assert np.isnan(reward_quality(empty)["frechet_random_warmup"])


def test_episode_sums_leave_out_the_episode_still_going() -> None:
    from sd2ail_reward.metrics import episode_sums

    reward = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    done = np.array([False, True, True, False, False, True, False])
    np.testing.assert_array_equal(episode_sums(reward, done), [3.0, 3.0, 15.0])
    assert episode_sums(reward, np.zeros(7, bool)).shape == (0,)
    with pytest.raises(ValueError, match="equal 1-D"):
        episode_sums(reward, done[:-1])
