"""Expert demonstrations in a zarr 3 store: write and read (recording, inspecting and replay
verification: `demo_replay.py`).

Layout (one store per env, flat over steps as in diffusion_policy's ReplayBuffer)::

    data/obs (N,O) f32   data/action (N,A) f32 (env-space)   data/next_obs (N,O) f32
    data/reward (N,) f32 data/terminated (N,) bool           data/truncated (N,) bool
    meta/episode_ends (E,) int64, exclusive cumulative ends (episode i = rows [ends[i-1], ends[i]))
    meta/reset_seed (E,) int64, the `env.reset(seed=...)` that replays episode i
    root attrs: schema_version, env_id, obs_dim, act_dim, action_low, action_high, env_kwargs,
                gymnasium_version, mujoco_version, episode_returns, plus caller provenance

Consistency rules (zarr has no transactions and no locks, see shared/reference/ECOSYSTEM.md §5):
one writer; stores are opened with ``use_consolidated=False`` and never consolidated (consolidated
metadata serves stale shapes and an append then silently overwrites rows); ``episode_ends`` is
written last, so it is the commit point: readers ignore rows beyond the last end, and a writer
trims such leftovers of an interrupted append before appending again.

This is the only module that imports zarr. The in-memory `DemoSet` lives in `demoset.py`
(re-exported here), so the learner needs neither zarr nor gymnasium.
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import numpy.typing as npt
import zarr

from sd2ail_reward.demoset import DemoSet, episode_returns

__all__ = [
    "DemoSet",
    "Episode",
    "read_demos",
    "write_episodes",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
CHUNK_ROWS = 4096
"""Rows per chunk of the data arrays (a few thousand rows: ~180 KB of Hopper obs)."""
META_CHUNK = 1024
"""Episodes per chunk of the meta arrays."""
DATA_KEYS: tuple[str, ...] = ("obs", "action", "next_obs", "reward", "terminated", "truncated")
_FLAG_KEYS = ("terminated", "truncated")
_WRITER_ATTRS = ("schema_version", "gymnasium_version", "mujoco_version", "episode_returns")
"""Attrs the writer always sets itself; caller values for these are replaced."""
_IDENTITY_ATTRS = ("env_id", "obs_dim", "act_dim", "action_low", "action_high", "env_kwargs")
"""Attrs an append must agree with: a mismatch would mix demos that do not replay alike."""

PathLike = str | os.PathLike[str]
I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Episode:
    """One episode of T transitions; `reset_seed` replays it via ``env.reset(seed=reset_seed)``."""

    obs: npt.NDArray[Any]
    action: npt.NDArray[Any]
    next_obs: npt.NDArray[Any]
    reward: npt.NDArray[Any]
    terminated: npt.NDArray[Any]
    truncated: npt.NDArray[Any]
    reset_seed: int


# ----------------------------------------------------------------------------- validation


def _numeric(x: Any, name: str, where: str, kinds: str) -> npt.NDArray[Any]:
    arr = np.asarray(x)
    if arr.dtype.kind not in kinds:
        raise ValueError(
            f"{where}: {name} has dtype {arr.dtype}; expected one of kinds {kinds!r} "
            "(object, string and complex arrays are rejected)"
        )
    return arr


def _check_episode(ep: Episode, i: int) -> dict[str, npt.NDArray[Any]]:
    """The episode's arrays cast to the store dtypes; ValueError saying what is off."""
    where = f"episode {i}"
    if not isinstance(ep, Episode):
        raise ValueError(f"{where}: expected an Episode, got {type(ep).__name__}")
    out: dict[str, npt.NDArray[Any]] = {}
    for key in ("obs", "action", "next_obs", "reward"):
        arr = _numeric(getattr(ep, key), key, where, "biuf")
        with np.errstate(over="ignore"):
            f = arr.astype(np.float32)
        if not np.all(np.isfinite(f)):
            raise ValueError(f"{where}: {key} has non-finite values (NaN, inf or beyond float32)")
        out[key] = f
    for key in _FLAG_KEYS:
        arr = _numeric(getattr(ep, key), key, where, "biu")
        if arr.dtype.kind != "b" and not np.all((arr == 0) | (arr == 1)):
            raise ValueError(f"{where}: {key} must be boolean (or 0/1)")
        out[key] = arr.astype(np.bool_)
    obs = out["obs"]
    if obs.ndim != 2 or obs.shape[0] < 1 or obs.shape[1] < 1:
        raise ValueError(f"{where}: obs must have shape (T, O) with T, O >= 1, got {obs.shape}")
    t, o = obs.shape
    act = out["action"]
    if act.ndim != 2 or act.shape[0] != t or act.shape[1] < 1:
        raise ValueError(f"{where}: action must have shape ({t}, A), got {act.shape}")
    expected = {"next_obs": (t, o), "reward": (t,), "terminated": (t,), "truncated": (t,)}
    for key, shape in expected.items():
        if out[key].shape != shape:
            raise ValueError(f"{where}: {key} must have shape {shape}, got {out[key].shape}")
    seed = ep.reset_seed
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"{where}: reset_seed must be a non-negative int, got {seed!r}")
    return out


def _jsonable(x: Any, where: str) -> Any:
    """Convert numpy values to JSON types; reject what JSON (hence zarr attrs) cannot hold."""
    if isinstance(x, np.ndarray):
        x = x.tolist()
    elif isinstance(x, np.generic):
        x = x.item()
    if x is None or isinstance(x, bool | int | str):
        return x
    if isinstance(x, float):
        if not math.isfinite(x):
            raise ValueError(f"attr {where} is {x}; only finite numbers can be stored")
        return x
    if isinstance(x, list | tuple):
        return [_jsonable(v, f"{where}[{j}]") for j, v in enumerate(x)]
    if isinstance(x, Mapping):
        out = {}
        for k, v in x.items():
            if not isinstance(k, str):
                raise ValueError(f"attr {where} has a non-str key {k!r}")
            out[k] = _jsonable(v, f"{where}.{k}")
        return out
    raise ValueError(f"attr {where} has type {type(x).__name__}, which is not JSON-serialisable")


def _bounds(value: Any, name: str, act_dim: int) -> list[float]:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.shape != (act_dim,) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be {act_dim} finite numbers, got {value!r}")
    return [float(v) for v in arr]


def _action_bounds_from_env(env_id: str, env_kwargs: Mapping[str, Any]) -> tuple[Any, Any]:
    try:
        env = gym.make(env_id, **env_kwargs)
    except gym.error.Error as e:
        raise ValueError(
            f"cannot look up the action bounds of {env_id!r} ({e}); "
            "pass attrs={'action_low': [...], 'action_high': [...]}"
        ) from e
    try:
        space = env.action_space
        if not isinstance(space, gym.spaces.Box):
            raise ValueError(f"{env_id} has a {type(space).__name__} action space; need a Box")
        return space.low, space.high
    finally:
        env.close()


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("gymnasium", "mujoco"):
        try:
            out[f"{dist}_version"] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[f"{dist}_version"] = "not installed"
    return out


# ----------------------------------------------------------------------------- store access


def _is_store(path: Path) -> bool:
    return (path / "zarr.json").is_file()


def _array(group: zarr.Group, name: str, where: Path) -> zarr.Array:
    try:
        node = group[name]
    except KeyError:
        raise ValueError(f"demo store {where} is missing {group.path}/{name}") from None
    if not isinstance(node, zarr.Array):
        raise ValueError(f"demo store {where}: {group.path}/{name} is not an array")
    if node.dtype.kind == "O":
        raise ValueError(f"demo store {where}: {group.path}/{name} has object dtype (refused)")
    return node


def _group(root: zarr.Group, name: str, where: Path) -> zarr.Group:
    node = root.get(name)
    if not isinstance(node, zarr.Group):
        raise ValueError(f"demo store {where} has no group {name!r}; not a demo store")
    return node


def _open_read(path: PathLike) -> tuple[zarr.Group, Path]:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"demo store not found: {p}")
    if not _is_store(p):
        raise ValueError(f"{p} is not a zarr 3 store (no zarr.json)")
    # use_consolidated=False: consolidated metadata could hold stale shapes (ECOSYSTEM.md §5.2).
    root = zarr.open_group(p, mode="r", use_consolidated=False)
    version = root.attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ValueError(
            f"demo store {p} has schema_version {version!r}, expected {SCHEMA_VERSION}"
        )
    return root, p


def _committed(root: zarr.Group, where: Path) -> tuple[I64, I64]:
    """Episode ends and reset seeds of the complete episodes; checks the store covers them."""
    meta, data = _group(root, "meta", where), _group(root, "data", where)
    ends = np.asarray(_array(meta, "episode_ends", where)[:], dtype=np.int64)
    seeds = np.asarray(_array(meta, "reset_seed", where)[:], dtype=np.int64)
    if ends.ndim != 1 or np.any(np.diff(np.concatenate([[0], ends])) <= 0):
        raise ValueError(f"demo store {where}: meta/episode_ends is not strictly increasing")
    if seeds.shape[0] < ends.shape[0]:
        raise ValueError(
            f"demo store {where}: {ends.shape[0]} episode ends but {seeds.shape[0]} reset seeds"
        )
    n_rows = int(ends[-1]) if ends.shape[0] else 0
    for key in DATA_KEYS:
        rows = _array(data, key, where).shape[0]
        if rows < n_rows:
            raise ValueError(
                f"demo store {where}: data/{key} has {rows} rows, episode_ends needs {n_rows}"
            )
    return ends, seeds[: ends.shape[0]]


# ----------------------------------------------------------------------------- writing


def _compatible(stored: Mapping[str, Any], new: Mapping[str, Any], where: Path) -> None:
    for key in _IDENTITY_ATTRS:
        if key in stored and key in new and stored[key] != new[key]:
            raise ValueError(
                f"demo store {where} holds {key}={stored[key]!r}; cannot append episodes with "
                f"{key}={new[key]!r} (expected {stored[key]!r}, got {new[key]!r})"
            )


def _create(path: Path, obs_dim: int, act_dim: int) -> zarr.Group:
    root = zarr.open_group(path, mode="w", use_consolidated=False)
    data, meta = root.create_group("data"), root.create_group("meta")
    for key in ("obs", "next_obs"):
        data.create_array(key, shape=(0, obs_dim), chunks=(CHUNK_ROWS, obs_dim), dtype="float32")
    data.create_array("action", shape=(0, act_dim), chunks=(CHUNK_ROWS, act_dim), dtype="float32")
    data.create_array("reward", shape=(0,), chunks=(CHUNK_ROWS,), dtype="float32")
    for key in _FLAG_KEYS:
        data.create_array(key, shape=(0,), chunks=(CHUNK_ROWS,), dtype="bool")
    for key in ("episode_ends", "reset_seed"):
        meta.create_array(key, shape=(0,), chunks=(META_CHUNK,), dtype="int64")
    return root


def _trim_uncommitted(root: zarr.Group, where: Path, n_rows: int, n_eps: int) -> None:
    """Drop rows and seeds an interrupted append left beyond the last episode end."""
    data, meta = _group(root, "data", where), _group(root, "meta", where)
    arrays = [(f"data/{k}", _array(data, k, where), n_rows) for k in DATA_KEYS]
    arrays.append(("meta/reset_seed", _array(meta, "reset_seed", where), n_eps))
    for name, arr, n in arrays:
        if arr.shape[0] > n:
            logger.warning(
                "demo store %s: dropping %d uncommitted entries of %s left by an interrupted write",
                where,
                arr.shape[0] - n,
                name,
            )
            arr.resize((n, *arr.shape[1:]))


def _episode_arrays(episodes: Sequence[Episode]) -> list[dict[str, npt.NDArray[Any]]]:
    if len(episodes) == 0:
        raise ValueError("no episodes to write")
    arrays = [_check_episode(ep, i) for i, ep in enumerate(episodes)]
    dims = (arrays[0]["obs"].shape[1], arrays[0]["action"].shape[1])
    for i, arr in enumerate(arrays):
        got = (arr["obs"].shape[1], arr["action"].shape[1])
        if got != dims:
            raise ValueError(
                f"episode {i}: (obs_dim, act_dim) = {got}, expected {dims} as in episode 0"
            )
    return arrays


def _caller_attrs(attrs: Mapping[str, Any] | None, identity: Mapping[str, Any]) -> dict[str, Any]:
    extra: dict[str, Any] = _jsonable(dict(attrs or {}), "attrs")
    for key in _WRITER_ATTRS:
        extra.pop(key, None)
    for key, value in identity.items():
        if key in extra and extra[key] != value:
            raise ValueError(f"attrs[{key!r}] = {extra[key]!r} contradicts {key} = {value!r}")
    extra.update(identity)
    if not isinstance(extra.get("env_kwargs", {}), dict):
        raise ValueError(f"attrs['env_kwargs'] must be a dict, got {extra['env_kwargs']!r}")
    return extra


def _open_append(p: Path, extra: dict[str, Any]) -> tuple[zarr.Group, int]:
    """Open an existing store for appending; checks `extra` agrees with it, trims leftovers."""
    root = zarr.open_group(p, mode="a", use_consolidated=False)
    stored = dict(root.attrs)
    if stored.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"demo store {p} has schema_version {stored.get('schema_version')!r}, "
            f"expected {SCHEMA_VERSION}"
        )
    for key in ("action_low", "action_high"):
        if key in extra:
            extra[key] = _bounds(extra[key], f"attrs[{key!r}]", extra["act_dim"])
        else:
            extra[key] = stored.get(key)
    extra.setdefault("env_kwargs", stored.get("env_kwargs", {}))
    _compatible(stored, extra, p)
    ends, _ = _committed(root, p)
    n_rows = int(ends[-1]) if ends.shape[0] else 0
    _trim_uncommitted(root, p, n_rows, int(ends.shape[0]))
    return root, n_rows


def _open_new(p: Path, extra: dict[str, Any], identity: Mapping[str, Any]) -> zarr.Group:
    """Create (or replace) a store; fills the action bounds from the env when not given."""
    extra.setdefault("env_kwargs", {})
    if "action_low" not in extra or "action_high" not in extra:
        low, high = _action_bounds_from_env(extra["env_id"], extra["env_kwargs"])
        extra.setdefault("action_low", low)
        extra.setdefault("action_high", high)
    for key in ("action_low", "action_high"):
        extra[key] = _bounds(extra[key], f"attrs[{key!r}]", extra["act_dim"])
    root = _create(p, extra["obs_dim"], extra["act_dim"])
    root.attrs.update({"schema_version": SCHEMA_VERSION, **identity})
    return root


def write_episodes(
    path: PathLike,
    episodes: Sequence[Episode],
    *,
    env_id: str,
    attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> None:
    """Create a demo store, or append to an existing one for the same env and dims.

    `attrs` is caller provenance (expert algorithm, training steps, ...) merged into the root
    attrs; it must give ``action_low``/``action_high`` unless `env_id` is a registered Gymnasium
    env with a Box action space (looked up with ``attrs["env_kwargs"]``). Everything is validated
    before the store is touched. `overwrite` replaces an existing store (never a directory that
    is not a zarr store). An append must match the store's env_id, dims, action bounds and
    env_kwargs, else ValueError.
    """
    arrays = _episode_arrays(episodes)
    identity: dict[str, Any] = {
        "env_id": env_id,
        "obs_dim": int(arrays[0]["obs"].shape[1]),
        "act_dim": int(arrays[0]["action"].shape[1]),
    }
    extra = _caller_attrs(attrs, identity)
    p = Path(path)
    if p.exists() and not _is_store(p) and (not p.is_dir() or any(p.iterdir())):
        raise ValueError(f"{p} exists and is not a zarr store; refusing to write there")
    if _is_store(p) and not overwrite:
        root, n_rows = _open_append(p, extra)
    else:
        root, n_rows = _open_new(p, extra, identity), 0

    data, meta = _group(root, "data", p), _group(root, "meta", p)
    for key in DATA_KEYS:
        _array(data, key, p).append(np.concatenate([arr[key] for arr in arrays]))
    lengths = np.array([arr["obs"].shape[0] for arr in arrays], dtype=np.int64)
    seeds = np.array([int(ep.reset_seed) for ep in episodes], dtype=np.int64)
    _array(meta, "reset_seed", p).append(seeds)
    # Commit point: until episode_ends grows, readers see none of the rows written above.
    _array(meta, "episode_ends", p).append(n_rows + np.cumsum(lengths))

    ends, _ = _committed(root, p)
    reward = np.asarray(_array(data, "reward", p)[: int(ends[-1])])
    extra.update(_versions())
    extra["schema_version"] = SCHEMA_VERSION
    extra["episode_returns"] = [float(r) for r in episode_returns(reward, ends)]
    root.attrs.update(extra)


# ----------------------------------------------------------------------------- reading


def read_demos(
    path: PathLike,
    *,
    num_episodes: int | None = None,
    select: Literal["first", "random"] = "first",
    seed: int = 0,
    expected_env_id: str | None = None,
    episodes: Sequence[int] | None = None,
) -> DemoSet:
    """Read complete episodes: all, the first `num_episodes`, a seeded random subset, or the
    store indices listed in `episodes`, in that order (overrides `num_episodes` and `select`).

    Random selection draws `num_episodes` distinct episodes with ``np.random.default_rng(seed)``
    and returns them in store order (sorted indices), so the same seed gives the same DemoSet.
    Raises FileNotFoundError for a missing store and ValueError for a wrong env, a corrupt store
    or more episodes than it holds.
    """
    root, p = _open_read(path)
    attrs: dict[str, Any] = dict(root.attrs)
    env_id = attrs.get("env_id")
    if expected_env_id is not None and env_id != expected_env_id:
        raise ValueError(f"demo store {p} holds {env_id} demos, expected {expected_env_id}")
    ends, seeds = _committed(root, p)
    n_avail = int(ends.shape[0])
    if n_avail == 0:
        raise ValueError(f"demo store {p} holds no complete episodes")
    if episodes is not None:
        idx = np.asarray(list(episodes), dtype=np.int64)
        if idx.ndim != 1 or idx.size == 0 or len(set(idx.tolist())) != idx.size:
            raise ValueError(f"episodes must be distinct store indices, got {list(episodes)}")
        if idx.min() < 0 or idx.max() >= n_avail:
            raise ValueError(
                f"episodes {list(episodes)} out of range: demo store {p} holds {n_avail}"
            )
        num_episodes, select = int(idx.size), "first"
    k = n_avail if num_episodes is None else num_episodes
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"num_episodes must be a positive int or None, got {num_episodes!r}")
    if k > n_avail:
        raise ValueError(f"asked for {k} episodes but demo store {p} holds only {n_avail}")
    if episodes is not None:
        pass
    elif select == "first":
        idx = np.arange(k, dtype=np.int64)
    elif select == "random":
        idx = np.sort(np.random.default_rng(seed).choice(n_avail, size=int(k), replace=False))
    else:
        raise ValueError(f"select must be 'first' or 'random', got {select!r}")

    starts = np.concatenate([[0], ends[:-1]])
    rows = np.concatenate([np.arange(starts[i], ends[i]) for i in idx])
    data = _group(root, "data", p)
    n_rows = int(ends[-1])
    out: dict[str, npt.NDArray[Any]] = {}
    for key in DATA_KEYS:
        out[key] = np.asarray(_array(data, key, p)[:n_rows])[rows]
    obs_dim, act_dim = int(attrs.get("obs_dim", -1)), int(attrs.get("act_dim", -1))
    expected = {
        "obs": ((n_rows, obs_dim), np.float32),
        "next_obs": ((n_rows, obs_dim), np.float32),
        "action": ((n_rows, act_dim), np.float32),
        "reward": ((n_rows,), np.float32),
        "terminated": ((n_rows,), np.bool_),
        "truncated": ((n_rows,), np.bool_),
    }
    for key, (shape, dtype) in expected.items():
        arr = out[key]
        if (arr.shape[1:], arr.dtype) != (shape[1:], np.dtype(dtype)):
            raise ValueError(
                f"demo store {p}: data/{key} is {arr.dtype}{list(arr.shape[1:])}, "
                f"expected {np.dtype(dtype)}{list(shape[1:])}"
            )
    lengths = (ends - starts)[idx]
    attrs["selected_episodes"] = [int(i) for i in idx]
    return DemoSet(
        obs=out["obs"],
        action=out["action"],
        next_obs=out["next_obs"],
        reward=out["reward"],
        terminated=out["terminated"],
        truncated=out["truncated"],
        episode_ends=np.cumsum(lengths).astype(np.int64),
        reset_seeds=seeds[idx].astype(np.int64),
        attrs=attrs,
    )


# ----------------------------------------------------------------------------- replay
