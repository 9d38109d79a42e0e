"""Demonstrations and their env: record an expert's episodes into a store, replay a store's
actions from its reset seeds to verify it, and summarise it. The store itself is `demos.py`."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import numpy.typing as npt

from sd2ail_reward.demos import (  # the store's package-internal readers
    _IDENTITY_ATTRS,
    _WRITER_ATTRS,
    DATA_KEYS,
    Episode,
    PathLike,
    _array,
    _group,
    _jsonable,
    _open_read,
    read_demos,
    write_episodes,
)


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of replaying stored actions from the stored reset seeds.

    Deviations compare the env's outputs cast to float32 (the stored dtype) with the stored
    values, so a faithful deterministic replay gives exactly 0. `ok` also requires that the env
    terminates exactly where the store says it did and never ends an episode early.
    """

    max_obs_dev: float
    max_reward_dev: float
    n_episodes: int
    ok: bool
    tolerance: float = 1e-5
    flag_mismatches: int = 0
    """Steps whose `terminated` differs from the replay, plus episodes the replay ended early."""
    problems: tuple[str, ...] = ()
    """One line per failing episode, naming the first deviating step."""


def inspect_demos(path: PathLike) -> str:
    """A readable summary: provenance, then one row per episode (length, return, seed, end)."""
    demos = read_demos(path)
    root, p = _open_read(path)
    leftover = _array(_group(root, "data", p), "obs", p).shape[0] - int(demos.episode_ends[-1])
    a = demos.attrs
    rets = demos.episode_returns
    lines = [
        f"demo store: {p}",
        f"env: {demos.env_id}  obs_dim {demos.obs_dim}  act_dim {demos.act_dim}  "
        f"schema {a.get('schema_version')}",
        f"versions: gymnasium {a.get('gymnasium_version')}  mujoco {a.get('mujoco_version')}",
        f"action bounds: low {np.round(demos.action_low, 4).tolist()}  "
        f"high {np.round(demos.action_high, 4).tolist()}",
    ]
    if a.get("env_kwargs"):
        lines.append(f"env_kwargs: {json.dumps(a['env_kwargs'], sort_keys=True)}")
    shown = set(_WRITER_ATTRS) | set(_IDENTITY_ATTRS) | {"selected_episodes"}
    provenance = {k: v for k, v in sorted(a.items()) if k not in shown}
    for key, value in provenance.items():
        lines.append(f"{key}: {json.dumps(value, sort_keys=True)}")
    lines.append(
        f"episodes: {demos.n_episodes}  steps: {int(demos.episode_ends[-1])}  "
        f"return mean {rets.mean():.2f} std {rets.std():.2f} min {rets.min():.2f} "
        f"max {rets.max():.2f}"
    )
    if leftover > 0:
        lines.append(f"note: {leftover} uncommitted rows beyond the last episode end (ignored)")
    lines.append(f"{'episode':>7}  {'length':>6}  {'return':>12}  {'reset_seed':>10}  end")
    for i, sl in enumerate(demos.episode_slices()):
        last = sl.stop - 1
        end = (
            "terminated"
            if demos.terminated[last]
            else "truncated"
            if demos.truncated[last]
            else "-"
        )
        lines.append(
            f"{i:>7}  {sl.stop - sl.start:>6}  {rets[i]:>12.3f}  "
            f"{int(demos.reset_seeds[i]):>10}  {end}"
        )
    return "\n".join(lines)


def _maxabs(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    # Cast the env's float64 output to float32 first: a faithful replay then deviates by exactly 0.
    diff = np.asarray(a, dtype=np.float32).astype(np.float64) - np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(diff))) if diff.size else 0.0


def verify_demos(
    path: PathLike, *, num_episodes: int | None = None, tol: float = 1e-5
) -> VerifyReport:
    """Replay the first `num_episodes` (default all) episodes and compare with the store.

    Each episode: ``env.reset(seed=reset_seed)`` (env made with the stored env_kwargs), the
    stored actions stepped in order; obs, next_obs and rewards are compared step by step. The
    replay stops where the stored episode ended; an env that ends earlier fails verification.
    """
    demos = read_demos(path, num_episodes=num_episodes)
    env = gym.make(demos.env_id, **dict(demos.attrs.get("env_kwargs") or {}))
    obs_dev = rew_dev = 0.0
    flag_mismatches = 0
    problems: list[str] = []
    try:
        for i, sl in enumerate(demos.episode_slices()):
            cur, _ = env.reset(seed=int(demos.reset_seeds[i]))
            first_bad: str | None = None
            for t in range(sl.start, sl.stop):
                nxt, r, term, trunc, _ = env.step(demos.action[t])
                o = max(_maxabs(cur, demos.obs[t]), _maxabs(nxt, demos.next_obs[t]))
                w = _maxabs(float(r), demos.reward[t])
                obs_dev, rew_dev = max(obs_dev, o), max(rew_dev, w)
                bad_flag = bool(term) != bool(demos.terminated[t])
                ended_early = (term or trunc) and t < sl.stop - 1
                flag_mismatches += int(bad_flag) + int(ended_early)
                if first_bad is None and (o > tol or w > tol or bad_flag or ended_early):
                    first_bad = (
                        f"episode {i} (reset_seed {int(demos.reset_seeds[i])}) step "
                        f"{t - sl.start}: obs dev {o:.3g}, reward dev {w:.3g}, "
                        f"terminated {bool(term)} vs stored {bool(demos.terminated[t])}"
                        + (", replay ended early" if ended_early else "")
                    )
                if term or trunc:
                    break
                cur = nxt
            if first_bad is not None:
                problems.append(first_bad)
    finally:
        env.close()
    ok = obs_dev <= tol and rew_dev <= tol and flag_mismatches == 0
    return VerifyReport(
        max_obs_dev=obs_dev,
        max_reward_dev=rew_dev,
        n_episodes=demos.n_episodes,
        ok=ok,
        tolerance=tol,
        flag_mismatches=flag_mismatches,
        problems=tuple(problems),
    )


@dataclass(frozen=True)
class Recording:
    """What `record_episodes` wrote, and what it left out."""

    returns: npt.NDArray[np.float64]
    """Each stored episode's return, in store order."""
    discarded_fallen: tuple[dict[str, float | int], ...] = ()
    """The episodes left out under `max_fallen` (reset seed, steps, return), as in the store's
    provenance: the stored returns alone would overstate an expert that sometimes falls."""

    @property
    def attempted_returns(self) -> npt.NDArray[np.float64]:
        """Every episode tried, stored or left out: the expert's unfiltered returns."""
        fallen = [float(episode["return"]) for episode in self.discarded_fallen]
        return np.concatenate([self.returns, np.asarray(fallen, dtype=np.float64)])


class TooManyFallsError(ValueError):
    """More episodes terminated than `record_episodes(max_fallen=...)` allows; nothing written."""


def record_episodes(
    env_id: str,
    policy: Callable[[npt.NDArray[Any]], npt.ArrayLike],
    *,
    path: PathLike,
    n_episodes: int,
    first_seed: int = 0,
    attrs: Mapping[str, Any] | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    max_fallen: int | None = None,
) -> Recording:
    """Roll out a deterministic `policy(obs) -> action` and write the episodes to `path`.

    Episodes are reset with seeds ``first_seed``, ``first_seed + 1``, ... and run until the env
    terminates or truncates. Actions are clipped to the action space and stored as float32
    exactly as passed to ``env.step``, so ``verify_demos`` replays them bit for bit.
    `env_kwargs` go to ``gym.make`` and are stored (verify replays with them).

    With `max_fallen` set, a store of whole episodes: an episode that terminates (the expert
    fell) is left out and the next seed is tried until `n_episodes` are kept. Each left-out
    episode's seed, length and return is stored in the provenance
    (``discarded_fallen_episodes``), so the store says how it was filtered and what the
    expert's unfiltered return was; more than `max_fallen` falls raise TooManyFallsError.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    if max_fallen is not None and max_fallen < 0:
        raise ValueError(f"max_fallen must be >= 0, got {max_fallen}")
    kwargs = _jsonable(dict(env_kwargs or {}), "env_kwargs")
    env = gym.make(env_id, **kwargs)
    try:
        space = env.action_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"{env_id}: need a 1-D Box action space, got {space}")
        low, high = space.low.astype(np.float32), space.high.astype(np.float32)
        episodes: list[Episode] = []
        discarded: list[dict[str, float | int]] = []
        seed = first_seed - 1
        while len(episodes) < n_episodes:
            seed += 1
            obs, _ = env.reset(seed=seed)
            rows: dict[str, list[Any]] = {k: [] for k in DATA_KEYS}
            while True:
                act = np.asarray(policy(obs), dtype=np.float32)
                if act.shape != low.shape or not np.all(np.isfinite(act)):
                    raise ValueError(
                        f"policy returned {act.shape} action {act}; expected {low.shape} finite"
                    )
                act = np.clip(act, low, high)
                nxt, r, term, trunc, _ = env.step(act)
                for key, value in zip(DATA_KEYS, (obs, act, nxt, r, term, trunc), strict=True):
                    rows[key].append(value)
                obs = nxt
                if term or trunc:
                    break
            episode = Episode(**{k: np.asarray(v) for k, v in rows.items()}, reset_seed=seed)
            if max_fallen is not None and bool(episode.terminated[-1]):
                discarded.append(
                    {"reset_seed": seed, "steps": len(episode.reward),
                     "return": float(episode.reward.astype(np.float32).sum(dtype=np.float64))}
                )  # fmt: skip
                if len(discarded) > max_fallen:
                    raise TooManyFallsError(
                        f"{env_id}: {len(discarded)} of {len(episodes) + len(discarded)} "
                        f"episodes terminated (max_fallen={max_fallen}): {discarded}"
                    )
                continue
            episodes.append(episode)
    finally:
        env.close()
    provenance = {
        **dict(attrs or {}),
        "env_kwargs": kwargs,
        "action_low": low.tolist(),
        "action_high": high.tolist(),
        "recorded_with": "sd2ail_reward.demo_replay.record_episodes",
    }
    if max_fallen is not None:
        provenance["max_fallen"] = max_fallen
        provenance["discarded_fallen_episodes"] = discarded
    write_episodes(path, episodes, env_id=env_id, attrs=provenance, overwrite=overwrite)
    returns = [ep.reward.astype(np.float32).sum(dtype=np.float64) for ep in episodes]
    return Recording(np.array(returns, dtype=np.float64), tuple(discarded))
