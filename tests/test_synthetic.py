"""Pseudo-expert generation: the dynamic threshold filters toward the expert data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from factories import agent_batch, make_demos, small_config

from sd2ail_reward.discriminator import DiffusionDiscriminator
from sd2ail_reward.learner import RewardLearner
from sd2ail_reward.synthetic import d_reward, dynamic_threshold, filter_candidates


def nearest_distance(x_ND: np.ndarray, ref_MD: np.ndarray) -> np.ndarray:
    """Distance of each row to its nearest reference row."""
    d2 = ((x_ND[:, None, :] - ref_MD[None, :, :]) ** 2).sum(-1)
    return np.sqrt(d2.min(axis=1))


@pytest.fixture(scope="module")
def trained() -> RewardLearner:
    learner = RewardLearner(small_config("diffail"), make_demos(n_episodes=2), seed=0)
    obs, act, next_obs = agent_batch(2000, seed=1)
    learner.add_agent(obs, act, next_obs)
    learner.train(300)
    return learner


def test_higher_threshold_accepts_fewer_and_accepted_are_closer(trained: RewardLearner) -> None:
    disc = trained.disc
    assert isinstance(disc, DiffusionDiscriminator)
    gen = torch.Generator().manual_seed(3)
    candidates = disc.sample(2000, gen, max_action=1.0)
    expert = trained.expert_rows()
    d_expert = d_reward(disc, torch.from_numpy(expert)).numpy()
    low, high = np.quantile(d_expert, [0.2, 0.8])
    loose = filter_candidates(disc, candidates, float(low))
    strict = filter_candidates(disc, candidates, float(high))
    assert strict.accepted_ND.shape[0] < loose.accepted_ND.shape[0]
    assert 0 < strict.acceptance_rate < loose.acceptance_rate <= 1

    tau = dynamic_threshold(disc, torch.from_numpy(expert[:256]))
    keep = d_reward(disc, candidates).numpy() > tau
    assert 0 < keep.sum() < len(keep)
    dist = nearest_distance(candidates.numpy(), expert)
    assert dist[keep].mean() < dist[~keep].mean()


def test_generated_actions_are_clamped_observations_are_not(trained: RewardLearner) -> None:
    disc = trained.disc
    assert isinstance(disc, DiffusionDiscriminator)
    candidates = disc.sample(4000, torch.Generator().manual_seed(4), max_action=0.5).numpy()
    act_cols = slice(0, trained.act_dim)
    assert np.abs(candidates[:, act_cols]).max() <= 0.5
    assert np.abs(candidates[:, trained.act_dim :]).max() > 0.5
