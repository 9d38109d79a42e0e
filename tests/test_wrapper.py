"""SD2AILRewardWrapper and SD2AILVectorRewardWrapper against an in-process learner and stubs."""

from __future__ import annotations

import pickle
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from factories import ACT_DIM, OBS_DIM, make_demos, small_config
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from sd2ail_reward.learner import RewardLearner
from sd2ail_reward.reward_protocol import RewardSource, TransitionPusher
from sd2ail_reward.wrapper import SD2AILRewardWrapper, SD2AILVectorRewardWrapper

KEYS = {"env_reward", "sd2ail_reward"}


@pytest.fixture(scope="module")
def learner() -> RewardLearner:
    return RewardLearner(small_config(), make_demos(n_episodes=1, steps=100))


class ToyEnv(gym.Env[np.ndarray, np.ndarray]):
    """Terminates after `length` steps. obs = [episode, t, length]; the reset obs has t = 0,
    so a next_obs with t = 0 would be a transition scored into the next episode."""

    def __init__(self, length: int = 3) -> None:
        self.length = length
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
        self.action_space = gym.spaces.Box(-2.0, 2.0, (ACT_DIM,), np.float32)
        self.episode = -1
        self.t = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.episode, self.t, self.length], np.float32)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.episode += 1
        self.t = 0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.t += 1
        a = float(np.asarray(action).reshape(-1)[0])
        return self._obs(), 10.0 * self.t + a, self.t >= self.length, False, {"t": self.t}


class Recorder:
    """A RewardSource with push(): reward = sum of the row; records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.pushes: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def reward(
        self, obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray | None = None
    ) -> np.ndarray:
        assert next_obs is not None
        self.calls.append((obs.copy(), act.copy(), next_obs.copy()))
        return (obs.sum(1) + act.sum(1) + next_obs.sum(1)).astype(np.float32)

    def push(
        self,
        obs: np.ndarray,
        act: np.ndarray,
        next_obs: np.ndarray | None = None,
    ) -> None:
        assert next_obs is not None
        self.pushes.append((obs.copy(), act.copy(), next_obs.copy()))


class CountingLearner:
    """Delegates to a learner and counts reward calls (scoring only, no push)."""

    def __init__(self, learner: RewardLearner) -> None:
        self.learner = learner
        self.calls: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def reward(
        self, obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray | None = None
    ) -> np.ndarray:
        assert next_obs is not None
        self.calls.append((obs.copy(), act.copy(), next_obs.copy()))
        return self.learner.reward(obs, act, next_obs)


def _actions(n: int, seed: int = 0, shape: tuple[int, ...] = (ACT_DIM,)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-2.0, 2.0, (n, *shape)).astype(np.float32)


def test_protocols_are_structural(learner: RewardLearner) -> None:
    assert isinstance(learner, RewardSource)
    assert isinstance(Recorder(), RewardSource) and isinstance(Recorder(), TransitionPusher)


def test_pendulum_reward_env_reward_and_info_keys(learner: RewardLearner) -> None:
    wrapped = SD2AILRewardWrapper(gym.make("Pendulum-v1"), learner, push=False)
    plain = gym.make("Pendulum-v1")
    obs, info = wrapped.reset(seed=3)
    plain_obs, _ = plain.reset(seed=3)
    np.testing.assert_array_equal(obs, plain_obs)
    keys = set(info)
    assert keys >= KEYS
    for act in _actions(20):
        next_obs, reward, _, _, info = wrapped.step(act)
        _, plain_reward, _, _, _ = plain.step(act)
        expected = learner.reward(obs[None], act[None], next_obs[None])[0]
        assert isinstance(reward, float) and reward == pytest.approx(float(expected), abs=1e-6)
        assert info["sd2ail_reward"] == reward
        assert isinstance(info["env_reward"], float) and info["env_reward"] == float(plain_reward)
        assert set(info) == keys
        obs = next_obs


def test_check_env_passes(learner: RewardLearner) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*(different from the unwrapped|symmetric and normalized).*"
        )
        env = SD2AILRewardWrapper(gym.make("Pendulum-v1"), learner, push=False)
        check_env(env, skip_render_check=True)  # rendering needs pygame, not installed
    assert env.spec is not None and env.spec.additional_wrappers[-1].name == "SD2AILRewardWrapper"


def test_terminal_obs_is_scored_never_the_reset_obs() -> None:
    source = Recorder()
    env = SD2AILRewardWrapper(ToyEnv(length=3), source, push=True, push_batch=100)
    for _ in range(2):
        obs, _ = env.reset()
        done = False
        while not done:
            obs, _, terminated, truncated, _ = env.step(np.array([0.5], np.float32))
            done = terminated or truncated
        terminal = obs
    env.close()
    obs_rows = np.concatenate([c[0] for c in source.calls])
    next_rows = np.concatenate([c[2] for c in source.calls])
    assert [len(c[0]) for c in source.calls] == [1] * 6
    # (episode, t) of every scored transition: s_t -> s_{t+1} inside one episode
    np.testing.assert_array_equal(obs_rows[:, :2], [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]])
    np.testing.assert_array_equal(next_rows[:, :2], obs_rows[:, :2] + [0, 1])
    np.testing.assert_array_equal(next_rows[-1], terminal)
    (pushed,) = source.pushes  # flushed on close: (obs, act, next_obs), no episode-end flags
    assert len(pushed) == 3
    np.testing.assert_array_equal(pushed[0], obs_rows)
    np.testing.assert_array_equal(pushed[2], next_rows)


def test_pushes_arrive_in_batches_and_remainder_on_close(learner: RewardLearner) -> None:
    k, steps = 4, 10
    start = len(learner.agent)
    env = SD2AILRewardWrapper(gym.make("Pendulum-v1"), learner, push=True, push_batch=k)
    obs, _ = env.reset(seed=0)
    rows = []
    for i, act in enumerate(_actions(steps, seed=1), start=1):
        next_obs, *_ = env.step(act)
        rows.append(learner.normalizer.rows(obs[None], act[None], next_obs[None]))
        obs = next_obs
        assert len(learner.agent) - start == (i // k) * k
    env.close()
    assert len(learner.agent) - start == steps and env.n_pushed == steps
    np.testing.assert_allclose(learner.agent.latest(steps), np.concatenate(rows), atol=1e-6)
    env.close()  # idempotent: nothing left to push
    assert len(learner.agent) - start == steps


def test_failed_push_keeps_the_rows_buffered() -> None:
    source = Recorder()
    env = SD2AILRewardWrapper(ToyEnv(length=10), source, push=True, push_batch=2)
    env.reset()
    env.step(np.zeros(1, np.float32))
    real_push = source.push

    def failing(*args: Any) -> None:
        raise ConnectionError("server down")

    source.push = failing  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        env.step(np.zeros(1, np.float32))
    source.push = real_push  # type: ignore[method-assign]
    env.step(np.zeros(1, np.float32))
    env.close()
    assert [len(p[0]) for p in source.pushes] == [2, 1] and env.n_pushed == 3
    np.testing.assert_array_equal(np.concatenate([p[0] for p in source.pushes])[:, 1], [0, 1, 2])


def test_bad_inputs_are_refused(learner: RewardLearner) -> None:
    env = SD2AILRewardWrapper(ToyEnv(), Recorder(), push=False)
    with pytest.raises(gym.error.ResetNeeded):
        env.step(np.zeros(1, np.float32))
    env.reset()
    with pytest.raises(ValueError, match="finite"):
        env.step(np.array([np.nan], np.float32))
    assert env.unwrapped.t == 0  # type: ignore[attr-defined]  # the env was not stepped
    with pytest.raises(ValueError, match="already wrapped"):
        SD2AILRewardWrapper(env, Recorder())
    with pytest.raises(ValueError, match="push_batch"):
        SD2AILRewardWrapper(ToyEnv(), Recorder(), push_batch=0)
    with pytest.raises(TypeError, match="push"):
        SD2AILRewardWrapper(ToyEnv(), CountingLearner(learner), push=True)
    with pytest.raises(TypeError, match="reward"):
        SD2AILRewardWrapper(ToyEnv(), 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Box"):
        SD2AILRewardWrapper(gym.make("CartPole-v1"), Recorder())


def test_picklable_before_first_use(learner: RewardLearner) -> None:
    by_address = SD2AILRewardWrapper(ToyEnv(), "127.0.0.1:1", token="secret")
    clone = pickle.loads(pickle.dumps(by_address))
    assert clone._link._source is None and clone._link._address == "127.0.0.1:1"
    assert "token" not in by_address._saved_kwargs  # the spec never records the token
    client = clone.reward_source  # built on first use; connects only when called
    assert type(client).__name__ == "RewardClient" and client.address == "127.0.0.1:1"
    assert pickle.loads(pickle.dumps(clone)).reward_source.address == "127.0.0.1:1"
    local = pickle.loads(pickle.dumps(SD2AILRewardWrapper(ToyEnv(), learner, push=False)))
    obs, _ = local.reset()
    act = np.array([1.0], np.float32)
    next_obs, reward, *_ = local.step(act)
    assert reward == pytest.approx(float(learner.reward(obs[None], act[None], next_obs[None])[0]))


def _run_single(length: int, actions: np.ndarray, done_before: np.ndarray, learner: Any) -> list:
    """Per-env reference: a single wrapper, reset where the vector env had a reset step."""
    env = SD2AILRewardWrapper(ToyEnv(length), learner, push=False)
    env.reset()
    out = []
    for act, reset_step in zip(actions, done_before, strict=True):
        if reset_step:
            env.reset()
            out.append(0.0)
        else:
            out.append(env.step(act)[1])
    return out


def test_sync_vector_next_step_one_call_per_step(learner: RewardLearner) -> None:
    source = CountingLearner(learner)
    lengths = (2, 5)
    venv = SyncVectorEnv([lambda n=n: ToyEnv(n) for n in lengths])  # type: ignore[misc]
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    env = SD2AILVectorRewardWrapper(venv, source, push=False)
    _, info = env.reset(seed=0)
    assert set(info) >= KEYS
    steps = 8
    actions = _actions(steps, seed=2, shape=(2, ACT_DIM))
    rewards, reset_steps, calls = [], [], []
    for act in actions:
        before = len(source.calls)
        _, rew, _, _, info = env.step(act)
        rewards.append(rew)
        reset_steps.append(~info["_sd2ail_reward"])
        calls.append(len(source.calls) - before)
        np.testing.assert_array_equal(info["sd2ail_reward"], rew)
        assert info["_env_reward"].all()
    reset_NS = np.array(reset_steps).T
    # reset steps: 3 and 6 (env 0), 6 (env 1); step 6 resets both, so it makes no call
    assert reset_NS[0].tolist() == [False, False, True] * 2 + [False, False]
    assert reset_NS[1].tolist() == [False] * 5 + [True, False, False]
    assert calls == [0 if reset_NS[:, t].all() else 1 for t in range(steps)]
    for t, (obs_BO, _, next_BO) in enumerate(c for c in source.calls):
        assert (next_BO[:, 1] == obs_BO[:, 1] + 1).all(), t  # no transition into a reset obs
    rewards_NS = np.array(rewards).T
    for i, n in enumerate(lengths):
        expected = _run_single(n, actions[:, i], reset_NS[i], learner)
        np.testing.assert_allclose(rewards_NS[i], expected, atol=1e-6)
        assert (rewards_NS[i][reset_NS[i]] == 0.0).all()
    env.close()


def test_sync_vector_pushes_only_scored_steps() -> None:
    source = Recorder()
    env = SD2AILVectorRewardWrapper(
        SyncVectorEnv([lambda: ToyEnv(2), lambda: ToyEnv(3)]), source, push=True, push_batch=4
    )
    env.reset()
    for act in _actions(6, shape=(2, ACT_DIM)):
        env.step(act)
    scored = sum(len(c[0]) for c in source.calls)
    assert scored == 6 * 2 - 3  # reset steps: 3 and 6 (env 0), 4 (env 1)
    assert [len(p[0]) for p in source.pushes] == [4, 4]
    env.close()
    assert [len(p[0]) for p in source.pushes] == [4, 4, 1]
    pushed = np.concatenate([p[0] for p in source.pushes])
    np.testing.assert_array_equal(pushed, np.concatenate([c[0] for c in source.calls]))
    next_obs = np.concatenate([p[2] for p in source.pushes])
    # The last step of each episode is pushed with its terminal obs (t == length), never the
    # reset obs: env 0 ended at steps 2 and 5, env 1 at step 3.
    assert (next_obs[:, 1] == next_obs[:, 2]).sum() == 3


def test_sync_vector_same_step_scores_final_obs() -> None:
    source = Recorder()
    venv = SyncVectorEnv([lambda: ToyEnv(2), lambda: ToyEnv(3)], autoreset_mode="SameStep")
    env = SD2AILVectorRewardWrapper(venv, source, push=False)
    env.reset()
    for act in _actions(6, shape=(2, ACT_DIM)):
        env.step(act)
    assert [len(c[0]) for c in source.calls] == [2] * 6
    obs = np.stack([c[0] for c in source.calls])
    next_obs = np.stack([c[2] for c in source.calls])
    np.testing.assert_array_equal(next_obs[..., 1], obs[..., 1] + 1)
    np.testing.assert_array_equal(next_obs[..., 0], obs[..., 0])  # same episode
    assert next_obs[:, 0, 1].tolist() == [1, 2] * 3 and next_obs[:, 1, 1].tolist() == [1, 2, 3] * 2


def test_sync_vector_disabled_mode_with_reset_mask() -> None:
    source = Recorder()
    venv = SyncVectorEnv([lambda: ToyEnv(1), lambda: ToyEnv(3)], autoreset_mode="Disabled")
    env = SD2AILVectorRewardWrapper(venv, source, push=False)
    env.reset()
    act = np.zeros((2, ACT_DIM), np.float32)
    _, _, terminated, _, _ = env.step(act)
    assert terminated.tolist() == [True, False]
    _, info = env.reset(options={"reset_mask": terminated.copy()})
    assert info["_env_reward"].tolist() == [True, False]
    env.step(act)
    obs_BO, _, next_BO = source.calls[-1]
    assert obs_BO[:, :2].tolist() == [[1, 0], [0, 1]] and next_BO[:, 1].tolist() == [1, 2]


def test_async_vector_env_fork_matches_direct_calls(learner: RewardLearner) -> None:
    fns = [lambda: SD2AILRewardWrapper(gym.make("Pendulum-v1"), learner, push=False)] * 2
    venv = AsyncVectorEnv(fns, context="fork")  # type: ignore[arg-type]
    plain = SyncVectorEnv([lambda: gym.make("Pendulum-v1")] * 2)
    try:
        obs, _ = venv.reset(seed=5)
        plain.reset(seed=5)
        for act in _actions(4, seed=3, shape=(2, ACT_DIM)):
            next_obs, rew, _, _, info = venv.step(act)
            _, plain_rew, _, _, _ = plain.step(act)
            np.testing.assert_allclose(rew, learner.reward(obs, act, next_obs), atol=1e-6)
            np.testing.assert_allclose(info["env_reward"], plain_rew, atol=1e-12)
            obs = next_obs
    finally:
        venv.close()
        plain.close()


def test_tianshou_subproc_env_matches_direct_calls(learner: RewardLearner) -> None:
    from tianshou.env import SubprocVectorEnv

    fns = [lambda: SD2AILRewardWrapper(gym.make("Pendulum-v1"), learner, push=False)] * 2
    venv = SubprocVectorEnv(fns, context="fork")
    plain = [gym.make("Pendulum-v1") for _ in range(2)]
    try:
        obs = np.stack([venv.reset(env_id=i, seed=7 + i)[0][0] for i in range(2)])
        for i, env in enumerate(plain):
            env.reset(seed=7 + i)
        for act in _actions(4, seed=4, shape=(2, ACT_DIM)):
            next_obs, rew, _, _, info = venv.step(act)
            plain_rew = [env.step(a)[1] for env, a in zip(plain, act, strict=True)]
            np.testing.assert_allclose(rew, learner.reward(obs, act, next_obs), atol=1e-6)
            env_rew = [i["env_reward"] for i in info]
            np.testing.assert_allclose(env_rew, plain_rew, atol=1e-12)
            assert all(set(i) >= KEYS for i in info)
            obs = next_obs
    finally:
        venv.close()


# --------------------------------------------------------------- a real server, forked workers


def _served_rollout(venv: Any, n_envs: int, steps: int) -> list[Any]:
    """Step `venv` with seeded random actions: per step (obs, act, next_obs, reward, info)."""
    rng = np.random.default_rng(0)
    records, obs = [], np.asarray(venv.reset(seed=[100 + i for i in range(n_envs)])[0])
    for _ in range(steps):
        act = rng.uniform(-2, 2, (n_envs, 1)).astype(np.float32)
        out = venv.step(act)
        next_obs, reward, info = np.asarray(out[0]), np.asarray(out[1]), out[-1]
        records.append((obs.copy(), act, next_obs.copy(), reward.copy(), info))
        obs = next_obs
    return records


@pytest.mark.parametrize("kind", ["gymnasium_async", "tianshou_subproc"])
def test_forked_workers_with_a_served_client_match_direct_client_calls(
    kind: str, demo_store: Any, serve_process: Any
) -> None:
    from conftest_server import SMALL_FLAGS, wait_serving

    from sd2ail_reward.client import RewardClient

    proc = serve_process("--demos", str(demo_store), *SMALL_FLAGS, "--no-train")
    wait_serving(proc.client())
    client = RewardClient(proc.address)  # created before the fork: each worker opens its own
    fns = [
        (lambda: SD2AILRewardWrapper(gym.make("Pendulum-v1"), reward=client, push=False))
        for _ in range(2)
    ]
    if kind == "gymnasium_async":
        venv: Any = AsyncVectorEnv(fns, context="fork")  # type: ignore[arg-type]
        records = _served_rollout(venv, 2, 5)
        env_rewards = [np.asarray(info["env_reward"]) for *_, info in records]
    else:
        from tianshou.env import SubprocVectorEnv

        venv = SubprocVectorEnv(fns, context="fork")
        obs = np.stack(venv.reset(seed=100)[0])  # every worker gets the same seed
        rng = np.random.default_rng(0)
        records, env_rewards = [], []
        for _ in range(5):
            act = rng.uniform(-2, 2, (2, 1)).astype(np.float32)
            next_obs, reward, _, _, info = venv.step(act)
            records.append((obs.copy(), act, np.stack(next_obs), np.asarray(reward), info))
            env_rewards.append(np.array([i["env_reward"] for i in info]))
            obs = np.stack(next_obs)
    venv.close()
    plain = [gym.make("Pendulum-v1") for _ in range(2)]
    for i, env in enumerate(plain):
        env.reset(seed=100 + i if kind == "gymnasium_async" else 100)
    for (obs, act, next_obs, reward, _), env_reward in zip(records, env_rewards, strict=True):
        direct = client.reward(obs, act, next_obs)
        np.testing.assert_allclose(reward, direct, rtol=1e-6, atol=1e-6)
        true = [plain[i].step(act[i])[1] for i in range(2)]
        np.testing.assert_allclose(env_reward, true, rtol=1e-6)
    client.close()


def test_score_steps_off_pushes_without_reward_calls() -> None:
    source = Recorder()
    env = SD2AILRewardWrapper(ToyEnv(length=3), source, push_batch=100, score_steps=False)
    env.reset()
    done = False
    while not done:
        _, reward, terminated, truncated, info = env.step(np.array([0.5], np.float32))
        assert reward == 0.0 and np.isnan(info["sd2ail_reward"]) and "env_reward" in info
        done = terminated or truncated
    env.close()
    assert source.calls == []  # no per-step reward call
    (pushed,) = source.pushes  # every transition still goes to the learner
    assert pushed[0].shape[0] == 3
