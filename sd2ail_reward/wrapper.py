"""Gymnasium wrappers that replace an env's reward with the learned SD2AIL reward.

`SD2AILRewardWrapper` wraps one env (the primary API: it works under every RL library, because
it scores inside `step()`, before any vector autoreset); `SD2AILVectorRewardWrapper` wraps a
`gymnasium.vector.VectorEnv` and sends one reward call per vector step for all sub-envs.

Semantics (both wrappers):

- The reward source is anything with `reward(obs, act, next_obs=None)` (`RewardSource`): a
  `RewardClient`, an in-process `RewardLearner` (the notebook path, no network), or a
  `"host:port"` string, from which a `RewardClient` is built on first use.
- The step's reward becomes the learned reward of the true transition (s, a, s'): the wrapper
  remembers the observation returned by its own env's `reset()` / `step()`, so the last step of
  an episode is scored with the terminal observation, never with the next episode's reset one.
- Actions are scored as the env received them (env-space, not clipped: Gymnasium MuJoCo envs
  do not clip either, and the learner scales with the bounds from the demo store). A non-finite
  action raises ValueError before the env is stepped.
- The env's own reward goes to `info["env_reward"]`, the learned one to
  `info["sd2ail_reward"]`; both keys are present on every step and in the `reset()` info (0.0
  there), as float scalars (vector: float64 arrays plus `_key` masks). The wrapper adds no other
  keys; it does not equalise the wrapped env's own reset and step keys.
- With `push=True` the scored transitions (obs, act, next_obs) are buffered and
  handed to the source in batches of exactly `push_batch` rows: `RewardClient.push`, or
  `RewardLearner.add_agent` for an in-process learner (which the caller then trains with
  `learner.train(n)`). `close()` (or `flush()`) sends the last partial batch.
- Picklable before first use, and fork safe: a wrapper holding a `RewardClient` or an address
  relies on the client's lazy per-process channel. An in-process learner is copied into each
  forked worker: rewards are right there, but pushes land in that worker's copy, so use a
  server (or `push=False`) with subprocess vector envs.
"""

from __future__ import annotations

import math
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper

from sd2ail_reward.reward_protocol import RewardSource, push_function

__all__ = ["SD2AILRewardWrapper", "SD2AILVectorRewardWrapper"]

ENV_REWARD_KEY = "env_reward"
SD2AIL_REWARD_KEY = "sd2ail_reward"


def _box_dim(space: gym.Space[Any], what: str) -> int:
    if not isinstance(space, gym.spaces.Box):
        raise TypeError(f"{what}: SD2AIL rewards need a Box space, got {space}")
    return int(np.prod(space.shape, dtype=np.int64))


class _RewardLink:
    """The wrappers' side of the reward protocol: resolves the source (lazily for an address),
    scores batches and buffers pushes. Holds no channel or thread of its own, so it pickles."""

    def __init__(
        self,
        reward: RewardSource | str,
        *,
        push: bool,
        push_batch: int,
        token: str | None,
        timeout_s: float | None,
    ) -> None:
        if push_batch < 1:
            raise ValueError(f"push_batch must be >= 1, got {push_batch}")
        self._address: str | None = None
        self._source: RewardSource | None = None
        if isinstance(reward, str):
            if not reward:
                raise ValueError("reward: expected 'host:port', got an empty string")
            self._address = reward
        elif isinstance(reward, RewardSource):
            self._source = reward
            if push and push_function(reward) is None:
                raise TypeError(
                    f"push=True needs a source with push() or add_agent(), got "
                    f"{type(reward).__name__}; pass push=False to only score"
                )
        else:
            raise TypeError(
                "reward: expected a RewardClient, a RewardLearner, any object with "
                f"reward(obs, act, next_obs=None), or 'host:port'; got {type(reward).__name__}"
            )
        self._token = token
        self._timeout_s = timeout_s
        self.push_enabled = push
        self.push_batch = push_batch
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._pending_rows = 0
        self.n_pushed = 0
        self.n_reward_calls = 0

    @property
    def source(self) -> RewardSource:
        if self._source is None:
            from sd2ail_reward.client import RewardClient  # lazy: needs grpc

            assert self._address is not None
            kwargs: dict[str, Any] = {"token": self._token}
            if self._timeout_s is not None:
                kwargs["timeout_s"] = self._timeout_s
            self._source = RewardClient(self._address, **kwargs)
        return self._source

    def score(self, obs_BO: np.ndarray, act_BA: np.ndarray, next_obs_BO: np.ndarray) -> np.ndarray:
        """One reward call for the batch: float32 (B,), checked finite."""
        self.n_reward_calls += 1
        out = np.asarray(self.source.reward(obs_BO, act_BA, next_obs_BO), dtype=np.float32)
        rows = obs_BO.shape[0]
        if out.shape != (rows,):
            raise RuntimeError(f"reward source returned shape {out.shape}, expected ({rows},)")
        if not np.isfinite(out).all():
            raise FloatingPointError("reward source returned a non-finite reward")
        return out

    def record(self, obs_BO: np.ndarray, act_BA: np.ndarray, next_obs_BO: np.ndarray) -> None:
        """Buffer scored transitions; push every complete batch of `push_batch` rows."""
        if not self.push_enabled or obs_BO.shape[0] == 0:
            return
        self._pending.append((obs_BO, act_BA, next_obs_BO))
        self._pending_rows += obs_BO.shape[0]
        if self._pending_rows >= self.push_batch:
            self._send(full_only=True)

    def flush(self) -> None:
        """Push whatever is buffered (the last partial batch)."""
        if self._pending_rows:
            self._send(full_only=False)

    def _send(self, *, full_only: bool) -> None:
        push = push_function(self.source)
        if push is None:
            raise TypeError(f"{type(self.source).__name__} has neither push() nor add_agent()")
        obs, act, next_obs = (np.concatenate(part) for part in zip(*self._pending, strict=True))
        k, total = self.push_batch, obs.shape[0]
        end = (total // k) * k if full_only else total
        sent = 0
        try:
            while sent < end:
                rows = slice(sent, min(sent + k, end))
                push(obs[rows], act[rows], next_obs[rows])
                sent = rows.stop
                self.n_pushed += rows.stop - rows.start
        finally:  # whatever was not pushed (a failed push included) stays buffered
            self._pending = [(obs[sent:], act[sent:], next_obs[sent:])]
            self._pending_rows = total - sent
            if sent == total:
                self._pending = []


def _check_actions(act_BA: np.ndarray) -> None:
    if not np.isfinite(act_BA).all():
        raise ValueError("action: expected finite values, got NaN or Inf (the env was not stepped)")


class SD2AILRewardWrapper(
    gym.Wrapper[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    gym.utils.RecordConstructorArgs,
):
    """Replaces a (Box-space) env's reward with the learned SD2AIL reward; see the module doc.

    Args:
        env: the env to wrap; Box observation and action spaces matching the source's dims.
            Put `RecordEpisodeStatistics` inside this wrapper to log the env's true return.
        reward: a `RewardClient`, a `RewardLearner`, any `RewardSource`, or "host:port".
        push: hand the scored transitions to the source for discriminator training.
        push_batch: transitions per push.
        token: bearer token, used only when `reward` is an address (never recorded in the spec).
        timeout_s: client deadline, used only when `reward` is an address (client default if None).
        score_steps: False skips the per-step reward call: `step()` returns 0.0 (and NaN in
            `info["sd2ail_reward"]`) while still pushing the transitions. For agents that score
            every sampled batch themselves (relabelling), to whom a step-time reward is waste.
    """

    def __init__(
        self,
        env: gym.Env[np.ndarray, np.ndarray],
        reward: RewardSource | str,
        *,
        push: bool = True,
        push_batch: int = 256,
        token: str | None = None,
        timeout_s: float | None = None,
        score_steps: bool = True,
    ) -> None:
        # Recorded without deepcopy (a learner is big; a client owns a channel) and without the
        # token, so `env.spec` never carries a secret.
        gym.utils.RecordConstructorArgs.__init__(
            self,
            reward=reward,
            push=push,
            push_batch=push_batch,
            timeout_s=timeout_s,
            score_steps=score_steps,
            _disable_deepcopy=True,
        )
        gym.Wrapper.__init__(self, env)
        inner: gym.Env[Any, Any] = env
        while isinstance(inner, gym.Wrapper):
            if isinstance(inner, SD2AILRewardWrapper):
                raise ValueError("env is already wrapped by SD2AILRewardWrapper")
            inner = inner.env
        self.obs_dim = _box_dim(env.observation_space, "observation space")
        self.act_dim = _box_dim(env.action_space, "action space")
        self._link = _RewardLink(
            reward, push=push, push_batch=push_batch, token=token, timeout_s=timeout_s
        )
        self._obs_O: np.ndarray | None = None
        self.score_steps = score_steps

    @property
    def reward_source(self) -> RewardSource:
        """The source in use (built on first access when given an address)."""
        return self._link.source

    @property
    def n_pushed(self) -> int:
        """Transitions handed to the source so far (the buffered remainder not included)."""
        return self._link.n_pushed

    def _flat(self, obs: Any) -> np.ndarray:
        return np.array(obs, dtype=np.float32, copy=True).reshape(self.obs_dim)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._obs_O = self._flat(obs)
        info = {**info, ENV_REWARD_KEY: 0.0, SD2AIL_REWARD_KEY: 0.0}
        return obs, info

    def step(
        self, action: np.ndarray
    ) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._obs_O is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        act_A = np.array(action, dtype=np.float32).reshape(-1)
        if act_A.shape[0] != self.act_dim:
            raise ValueError(f"action: expected {self.act_dim} values, got {act_A.shape[0]}")
        _check_actions(act_A)
        next_obs, env_reward, terminated, truncated, info = self.env.step(action)
        obs_O, self._obs_O = self._obs_O, self._flat(next_obs)
        obs_1O, act_1A, next_1O = obs_O[None], act_A[None], self._obs_O[None]
        if self.score_steps:
            reward = float(self._link.score(obs_1O, act_1A, next_1O)[0])
            learned = reward
        else:
            reward, learned = 0.0, math.nan
        self._link.record(obs_1O, act_1A, next_1O)
        info = {**info, ENV_REWARD_KEY: float(env_reward), SD2AIL_REWARD_KEY: learned}
        return next_obs, reward, terminated, truncated, info

    def flush(self) -> None:
        """Push the buffered transitions now."""
        self._link.flush()

    def close(self) -> None:
        """Flush the last partial push batch, then close the env."""
        try:
            self._link.flush()
        finally:
            super().close()


class SD2AILVectorRewardWrapper(VectorWrapper):
    """Replaces a vector env's rewards with the learned reward, one reward call per step.

    Autoreset modes (`env.metadata["autoreset_mode"]`; NEXT_STEP assumed, with a warning, when
    absent):

    - NEXT_STEP (Sync/AsyncVectorEnv default): the step after a done is a reset step (the env
      ignores the action and returns the reset obs with reward 0); it is neither scored nor
      pushed and gets reward 0.0.
    - SAME_STEP: done sub-envs are scored with `info["final_obs"]`.
    - DISABLED: every sub-env step is a real step; the caller resets done sub-envs with
      `reset(options={"reset_mask": ...})` before stepping them again.

    Info gains `env_reward` (`_env_reward` all True) and `sd2ail_reward` (`_sd2ail_reward` True
    where the sub-env was scored), float64 arrays; reset info carries both as zeros. Arguments
    as for `SD2AILRewardWrapper`.
    """

    def __init__(
        self,
        env: VectorEnv,
        reward: RewardSource | str,
        *,
        push: bool = True,
        push_batch: int = 256,
        token: str | None = None,
        timeout_s: float | None = None,
    ) -> None:
        super().__init__(env)
        self.obs_dim = _box_dim(env.single_observation_space, "single observation space")
        self.act_dim = _box_dim(env.single_action_space, "single action space")
        mode = env.metadata.get("autoreset_mode")
        if mode is None:
            gym.logger.warn(f"{env} has no `autoreset_mode` metadata: assuming NEXT_STEP")
            mode = AutoresetMode.NEXT_STEP
        self.autoreset_mode = AutoresetMode(mode)
        self._link = _RewardLink(
            reward, push=push, push_batch=push_batch, token=token, timeout_s=timeout_s
        )
        self._obs_NO: np.ndarray | None = None
        self._autoreset_N = np.zeros(self.num_envs, dtype=bool)

    @property
    def reward_source(self) -> RewardSource:
        return self._link.source

    @property
    def n_pushed(self) -> int:
        return self._link.n_pushed

    @property
    def n_reward_calls(self) -> int:
        """Reward calls made so far (one per step that had at least one scored sub-env)."""
        return self._link.n_reward_calls

    def _flat(self, obs: Any, rows: int) -> np.ndarray:
        return np.array(obs, dtype=np.float32, copy=True).reshape(rows, self.obs_dim)

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        mask_N = np.ones(self.num_envs, dtype=bool)
        if options is not None and "reset_mask" in options:  # read before the env pops it
            mask_N = np.array(options["reset_mask"], dtype=bool).reshape(self.num_envs)
        obs, info = self.env.reset(seed=seed, options=options)  # type: ignore[arg-type]
        self._obs_NO = self._flat(obs, self.num_envs)
        self._autoreset_N[mask_N] = False
        info = dict(info)
        for key in (ENV_REWARD_KEY, SD2AIL_REWARD_KEY):
            info[key] = np.zeros(self.num_envs, dtype=np.float64)
            info[f"_{key}"] = mask_N.copy()
        return obs, info

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        if self._obs_NO is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        n = self.num_envs
        act_NA = np.array(actions, dtype=np.float32).reshape(n, self.act_dim)
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            scored_N = ~self._autoreset_N
        else:
            scored_N = np.ones(n, dtype=bool)
        _check_actions(act_NA[scored_N])
        obs, env_rewards, terminated, truncated, info = self.env.step(actions)
        done_N = np.logical_or(terminated, truncated)
        obs_NO, self._obs_NO = self._obs_NO, self._flat(obs, n)
        next_obs_NO = self._obs_NO.copy()
        if self.autoreset_mode == AutoresetMode.SAME_STEP:
            for i in np.flatnonzero(done_N):
                next_obs_NO[i] = self._flat(info["final_obs"][i], 1)[0]
        elif self.autoreset_mode == AutoresetMode.NEXT_STEP:
            self._autoreset_N = done_N.copy()
        rewards_N = np.zeros(n, dtype=np.float64)
        if scored_N.any():
            obs_BO, act_BA, next_BO = obs_NO[scored_N], act_NA[scored_N], next_obs_NO[scored_N]
            rewards_N[scored_N] = self._link.score(obs_BO, act_BA, next_BO)
            self._link.record(obs_BO, act_BA, next_BO)
        info = dict(info)
        info[ENV_REWARD_KEY] = np.array(env_rewards, dtype=np.float64, copy=True)
        info[f"_{ENV_REWARD_KEY}"] = np.ones(n, dtype=bool)
        info[SD2AIL_REWARD_KEY] = rewards_N.copy()
        info[f"_{SD2AIL_REWARD_KEY}"] = scored_N.copy()
        return obs, rewards_N, terminated, truncated, info

    def flush(self) -> None:
        self._link.flush()

    def close(self, **kwargs: Any) -> None:
        try:
            self._link.flush()
        finally:
            super().close(**kwargs)
