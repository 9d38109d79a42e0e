"""InputNormalizer: the one place where values change space.

Actions travel in env space and are scaled to [-1, 1] with the bounds recorded in the demo
store (a bug once scored SAC's [-1, 1] actions as env actions: Pendulum's were halved);
observations are normalised with the expert's statistics where the preset says so.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from factories import make_demos, small_config

from sd2ail_reward.config import preset, replace
from sd2ail_reward.demos import read_demos
from sd2ail_reward.learner import RewardLearner
from sd2ail_reward.normalize import STD_FLOOR, InputNormalizer

REPO = Path(__file__).resolve().parents[1]


def normalizer(
    low: list[float], high: list[float], obs: np.ndarray | None = None
) -> InputNormalizer:
    obs = np.random.default_rng(0).normal(size=(50, 3)) if obs is None else obs
    return InputNormalizer.from_expert(
        obs, np.array(low), np.array(high), normalize_obs=True, state_only=False
    )


def test_env_actions_map_to_unit_box_with_the_bounds_and_back() -> None:
    norm = normalizer([0.0, -3.0], [1.0, 5.0])
    act = np.array([[0.0, -3.0], [1.0, 5.0], [0.5, 1.0], [0.25, 3.0]], np.float32)
    np.testing.assert_allclose(norm.action(act), [[-1, -1], [1, 1], [0, 0], [-0.5, 0.5]], atol=1e-6)
    obs = np.random.default_rng(1).normal(size=(4, 3)).astype(np.float32)
    x = norm.rows(obs, act, None)
    assert x.dtype == np.float32 and x.shape == (4, 2 + 3)
    np.testing.assert_allclose(x[:, :2], norm.action(act), atol=1e-6)  # actions first
    back_obs, back_act = norm.split(x)
    np.testing.assert_allclose(back_act, act, atol=1e-5)
    np.testing.assert_allclose(back_obs, obs, atol=1e-5)


def test_the_learner_scales_actions_with_the_demo_stores_bounds() -> None:
    """Pendulum's torque bounds are [-2, 2]: the expert's stored (env-space) actions fill
    [-1, 1] in the discriminator's input, no more (doubled) and not half of it (halved)."""
    demos = read_demos(REPO / "demos" / "Pendulum-v1.zarr")
    np.testing.assert_array_equal(demos.action_low, [-2.0])
    np.testing.assert_array_equal(demos.action_high, [2.0])
    learner = RewardLearner(small_config(), demos)
    scaled = learner.expert_rows()[:, :1]
    assert scaled.min() >= -1.0 - 1e-6 and scaled.max() <= 1.0 + 1e-6
    assert np.abs(scaled).max() > 0.9  # the swing-up uses (nearly) full torque
    np.testing.assert_allclose(learner.normalizer.action(np.array([[2.0], [-1.0]])), [[1], [-0.5]])


def test_obs_use_the_expert_statistics_when_the_preset_says_so() -> None:
    obs = np.random.default_rng(2).normal(5.0, 3.0, size=(400, 3)).astype(np.float32)
    obs[:, 2] = 7.0  # a dimension the expert never moves: its std is floored, not zero
    demos = dataclasses.replace(make_demos(n_episodes=2), obs=obs)
    assert preset("pendulum").normalize_obs and preset("hopper").normalize_obs
    assert not preset("halfcheetah").normalize_obs and not preset("ant").normalize_obs

    on = RewardLearner(small_config(), demos).normalizer
    np.testing.assert_allclose(on.obs_mean_O, obs.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(on.obs_std_O[:2], obs.std(axis=0)[:2], rtol=1e-5)
    assert on.obs_std_O[2] == pytest.approx(STD_FLOOR)
    z = on.obs(obs)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z[:, :2].std(axis=0), 1.0, atol=1e-4)
    assert np.isfinite(z).all()

    off = RewardLearner(replace(small_config(), normalize_obs=False), demos).normalizer
    np.testing.assert_array_equal(off.obs(obs), obs)  # identity: obs enter unchanged


def test_state_only_rows_are_obs_and_next_obs() -> None:
    obs = np.random.default_rng(3).normal(size=(20, 3)).astype(np.float32)
    norm = InputNormalizer.from_expert(
        obs, np.array([-2.0]), np.array([2.0]), normalize_obs=True, state_only=True
    )
    nxt = obs + 1.0
    x = norm.rows(obs, np.zeros((20, 1), np.float32), nxt)
    assert x.shape == (20, 6) and norm.input_dim == 6 and norm.action_dims is None
    np.testing.assert_allclose(x[:, 3:], norm.obs(nxt), atol=1e-6)
    with pytest.raises(ValueError, match="next_obs: required"):
        norm.rows(obs, np.zeros((20, 1), np.float32), None)


@pytest.mark.parametrize(
    ("low", "high", "match"),
    [([1.0], [1.0], "low < high"), ([2.0], [-2.0], "low < high"), ([-np.inf], [1.0], "finite")],
)
def test_bad_action_bounds_are_refused(low: list[float], high: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        normalizer(low, high)


def test_state_dict_round_trip() -> None:
    norm = normalizer([-2.0], [2.0])
    again = InputNormalizer.from_state_dict(dict(norm.state_dict()))
    x = np.random.default_rng(4).normal(size=(5, 3)).astype(np.float32)
    act = np.ones((5, 1), np.float32)
    np.testing.assert_array_equal(again.rows(x, act, None), norm.rows(x, act, None))
