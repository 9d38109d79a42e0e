"""Convert between Minari datasets and zarr demo stores (needs the `minari` extra).

Minari (Farama's format for offline RL data) keeps one group per episode with T+1
observations, T actions, rewards, terminations and truncations, plus a dataset-level
``metadata.json`` (env spec, serialised spaces, provenance). A demo store keeps the same steps
flat, with ``next_obs`` explicit (layout in sd2ail_reward/demos.py). The mapping:

===================================  =========================================================
Minari episode i                     demo store
===================================  =========================================================
observations[:-1] / observations[1:] data/obs / data/next_obs (float32)
actions, rewards                     data/action, data/reward (float32)
terminations, truncations            data/terminated, data/truncated
episode lengths                      meta/episode_ends (exclusive cumulative)
episode seed                         meta/reset_seed (see below)
env_spec (id, kwargs)                attrs env_id, env_kwargs; the spec JSON in minari_env_spec
action_space bounds                  attrs action_low / action_high
metadata.json provenance             attrs minari_* (dataset id, version, episode ids, author,
                                     algorithm, spaces, dtypes, ...)
===================================  =========================================================

Exactness. ``store -> export_minari -> import_minari`` gives back the same store: every array
bit for bit, the same reset seeds and the original root attrs (kept in the dataset's metadata
under ``sd2ail_demo_attrs``; the re-imported store adds ``minari_*`` keys). ``Minari ->
import_minari -> export_minari`` gives back the same episodes, seeds, env spec, spaces and
provenance, with the array dtypes of the original; values equal the original's rounded to
float32 (the store's dtype), so float32 observations and actions, and flags, are bit-exact, while
float64 rewards (Gymnasium's) come back rounded to float32.

Reset seeds. A store's ``meta/reset_seed`` is a non-negative int64. Minari's DataCollector seeds
every reset by default with a random 64-bit seed, half of which do not fit; episodes reset
without a seed have none. Such episodes get reset_seed 0 in ``meta/reset_seed``, their store
indices go to attrs ``minari_unreplayable_episodes`` (``demos verify`` cannot replay them from
their seed), and the exact Minari seeds (decimal strings, or null) to ``minari_seeds``, which
export reads back.

Not kept: per-step ``infos`` (a store has no place for them; their keys go to attrs
``minari_info_keys``), and non-Box (dict, tuple, image, discrete) spaces, which are refused.

Minari is imported inside the functions only, so the library works without it. Datasets are
found by id in the local Minari root (``MINARI_DATASETS_PATH``, default ``~/.minari/datasets``)
and never downloaded here (``minari download ID`` does that), or given as a path.
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import numpy.typing as npt

from sd2ail_reward.demos import DemoSet, Episode, read_demos, write_episodes

__all__ = ["MinariExport", "MinariImport", "export_minari", "import_minari"]

PathLike = str | os.PathLike[str]

ATTRS_KEY = "sd2ail_demo_attrs"
"""Minari metadata key holding the exported store's root attrs (JSON), for an exact return."""
_INT64_MAX = 2**63 - 1
_WRITER_ATTRS = ("schema_version", "gymnasium_version", "mujoco_version", "episode_returns")
"""Attrs write_episodes always sets itself (not restored from the Minari metadata)."""
_METADATA_KEYS = (
    "algorithm_name",
    "author",
    "author_email",
    "code_permalink",
    "description",
    "requirements",
    "ref_min_score",
    "ref_max_score",
    "num_episodes_average_score",
)
"""Minari provenance carried to attrs ``minari_metadata`` and back."""


@dataclass(frozen=True)
class MinariImport:
    """What `import_minari` wrote."""

    store: Path
    dataset_id: str
    env_id: str
    n_episodes: int
    n_steps: int
    unreplayable_episodes: tuple[int, ...]
    """Store indices whose meta/reset_seed is not their Minari seed (none, or beyond int64)."""
    dropped_info_keys: tuple[str, ...]


@dataclass(frozen=True)
class MinariExport:
    """What `export_minari` wrote."""

    dataset_id: str
    path: Path
    env_id: str
    n_episodes: int
    n_steps: int


def _minari() -> Any:
    try:
        return importlib.import_module("minari")
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "Minari conversion needs the minari extra: pip install 'sd2ail-reward[minari]'"
        ) from err


def _json_safe(value: Any) -> Any:
    """`value` as plain JSON types (sets become sorted lists); TypeError if impossible."""
    if isinstance(value, set | frozenset):
        return sorted(_json_safe(v) for v in value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _load(source: PathLike) -> Any:
    """A MinariDataset from a dataset directory (or its data/ folder), else from a local id."""
    minari = _minari()
    path = Path(source)
    if path.exists():
        for data in (path / "data", path):
            if (data / "metadata.json").is_file():
                return minari.MinariDataset(data)
        raise ValueError(f"{path} is not a Minari dataset (no metadata.json in it or data/)")
    try:
        return minari.load_dataset(str(source), download=False)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"no local Minari dataset {str(source)!r} ({err}); download it first with "
            f"`minari download {source}`, or pass the dataset's directory"
        ) from None


def _flat_box(space: Any, what: str) -> gym.spaces.Box:
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise ValueError(f"{what}: only flat (1-D) Box spaces convert to a demo store, got {space}")
    return space


def _as_float32(x: Any, name: str, where: str) -> npt.NDArray[np.float32]:
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{where}: {name} has dtype {arr.dtype}, expected numbers")
    return arr.astype(np.float32)


def _episode(ep: Any, seed: int, obs_dim: int, act_dim: int) -> Episode:
    where = f"Minari episode {ep.id}"
    obs = _as_float32(ep.observations, "observations", where).reshape(-1, obs_dim)
    act = _as_float32(ep.actions, "actions", where).reshape(-1, act_dim)
    t = act.shape[0]
    if obs.shape[0] != t + 1 or t < 1:
        raise ValueError(f"{where}: {obs.shape[0]} observations for {t} actions (need T+1, T>=1)")
    return Episode(
        obs=obs[:-1],
        action=act,
        next_obs=obs[1:],
        reward=_as_float32(ep.rewards, "rewards", where),
        terminated=np.asarray(ep.terminations, dtype=np.bool_),
        truncated=np.asarray(ep.truncations, dtype=np.bool_),
        reset_seed=seed,
    )


def _env_kwargs(spec: Any) -> dict[str, Any]:
    try:
        return dict(_json_safe(dict(spec.kwargs)))
    except TypeError:
        return {k: v for k, v in spec.kwargs.items() if _is_json(v)}


def _is_json(value: Any) -> bool:
    try:
        _json_safe(value)
    except TypeError:
        return False
    return True


def import_minari(
    source: PathLike,
    out: PathLike,
    *,
    episodes: Sequence[int] | None = None,
    env_id: str | None = None,
    overwrite: bool = False,
) -> MinariImport:
    """Write a Minari dataset (a local dataset id or a dataset directory) to a new demo store.

    `episodes` picks Minari episode ids (in the order given; default all). `env_id` is needed
    only when the dataset records no env spec. An existing `out` is refused unless
    `overwrite`. See the module docstring for what is kept and how exactly.
    """
    minari_module = _minari()
    serialize_space = importlib.import_module("minari.serialization").serialize_space
    dataset = _load(source)
    out_path = Path(out)
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} exists; pass overwrite=True (--overwrite) to replace")
    obs_space = _flat_box(dataset.observation_space, "observation space")
    act_space = _flat_box(dataset.action_space, "action space")
    spec = dataset.env_spec
    if spec is None and env_id is None:
        raise ValueError(f"Minari dataset {dataset.id} records no env spec; pass env_id")
    env = env_id or spec.id
    ids = list(dataset.episode_indices) if episodes is None else [int(i) for i in episodes]
    known = set(int(i) for i in dataset.episode_indices)
    unknown = [i for i in ids if i not in known]
    if not ids or unknown or len(set(ids)) != len(ids):
        raise ValueError(
            f"episodes must be distinct ids of {dataset.id} (0..{len(known) - 1}), got "
            f"{list(episodes or [])}"
        )

    metas = list(dataset.storage.get_episode_metadata(ids))
    obs_dim, act_dim = int(obs_space.shape[0]), int(act_space.shape[0])
    converted: list[Episode] = []
    seeds: list[str | None] = []
    unreplayable: list[int] = []
    options: list[Any] = []
    info_keys: set[str] = set()
    dtypes: dict[str, str] = {}
    for j, (ep, meta) in enumerate(zip(dataset.iterate_episodes(ids), metas, strict=True)):
        seed = meta.get("seed")
        fits = seed is not None and 0 <= int(seed) <= _INT64_MAX
        if not fits:
            unreplayable.append(j)
        seeds.append(None if seed is None else str(int(seed)))
        options.append(_json_safe(meta.get("options")))
        info_keys.update((ep.infos or {}).keys())
        for key in ("observations", "actions", "rewards"):
            dtypes.setdefault(key, str(np.asarray(getattr(ep, key)).dtype))
        converted.append(_episode(ep, int(seed) if fits else 0, obs_dim, act_dim))

    md = dataset.storage.metadata
    attrs: dict[str, Any] = {
        "env_kwargs": _env_kwargs(spec) if spec is not None else {},
        "action_low": act_space.low.astype(np.float64).tolist(),
        "action_high": act_space.high.astype(np.float64).tolist(),
    }
    restored = md.get(ATTRS_KEY)
    if restored:  # a store exported by export_minari: its own attrs (env_kwargs, bounds, ...)
        attrs.update({k: v for k, v in json.loads(restored).items() if k not in _WRITER_ATTRS})
    attrs.update(
        {
            "imported_with": "sd2ail-reward demos import-minari",
            "minari_dataset_id": str(dataset.id),
            "minari_version": str(dataset.minari_version),
            "minari_installed_version": str(minari_module.__version__),
            "minari_episode_ids": ids,
            "minari_total_episodes": int(dataset.total_episodes),
            "minari_env_spec": None if spec is None else spec.to_json(),
            "minari_eval_env_spec": md.get("eval_env_spec"),
            "minari_observation_space": serialize_space(obs_space),
            "minari_action_space": serialize_space(act_space),
            "minari_dtypes": dtypes,
            "minari_metadata": {k: _json_safe(md[k]) for k in _METADATA_KEYS if k in md},
            "minari_info_keys": sorted(info_keys),
        }
    )
    if unreplayable:
        attrs["minari_seeds"] = seeds
        attrs["minari_unreplayable_episodes"] = unreplayable
    else:
        attrs.pop("minari_seeds", None)
        attrs.pop("minari_unreplayable_episodes", None)
    if any(o is not None for o in options):
        attrs["minari_reset_options"] = options
    else:
        attrs.pop("minari_reset_options", None)
    write_episodes(out_path, converted, env_id=env, attrs=attrs, overwrite=True)
    return MinariImport(
        store=out_path,
        dataset_id=str(dataset.id),
        env_id=env,
        n_episodes=len(converted),
        n_steps=sum(ep.action.shape[0] for ep in converted),
        unreplayable_episodes=tuple(unreplayable),
        dropped_info_keys=tuple(sorted(info_keys)),
    )


# ----------------------------------------------------------------------------- export


def _export_seeds(demos: DemoSet) -> list[int | None]:
    recorded = demos.attrs.get("minari_seeds")
    if recorded is not None and len(recorded) == demos.n_episodes:
        return [None if s is None else int(s) for s in recorded]
    return [int(s) for s in demos.reset_seeds]


def _export_spec(demos: DemoSet) -> gym.envs.registration.EnvSpec:
    recorded = demos.attrs.get("minari_env_spec")
    if recorded:
        return gym.envs.registration.EnvSpec.from_json(recorded)
    spec = gym.spec(demos.env_id)
    kwargs = dict(demos.attrs.get("env_kwargs") or {})
    if kwargs:
        spec = replace(spec, kwargs={**spec.kwargs, **kwargs})
    return spec


def export_minari(
    store: PathLike, dataset_id: str, *, data_format: str | None = None
) -> MinariExport:
    """Write every episode of a demo store as a new local Minari dataset `dataset_id`.

    The dataset goes to the local Minari root (``MINARI_DATASETS_PATH``); an existing id is
    refused by Minari. Env spec, spaces, seeds, dtypes and Minari provenance come from the
    store's ``minari_*`` attrs when it was imported from Minari, else from the registered env;
    the store's own root attrs travel in the metadata key ``sd2ail_demo_attrs``.
    `data_format` is Minari's ("hdf5" or "arrow"; default Minari's default).
    """
    minari = _minari()
    episode_buffer = importlib.import_module("minari.data_collector").EpisodeBuffer
    deserialize_space = importlib.import_module("minari.serialization").deserialize_space
    demos = read_demos(store)
    a = demos.attrs
    spec = _export_spec(demos)
    if a.get("minari_observation_space"):
        obs_space = deserialize_space(json.loads(a["minari_observation_space"]))
        act_space = deserialize_space(json.loads(a["minari_action_space"]))
    else:
        env = gym.make(spec)
        obs_space, act_space = env.observation_space, env.action_space
        env.close()
    _flat_box(obs_space, "observation space")
    _flat_box(act_space, "action space")
    dtypes = {
        "observations": str(obs_space.dtype),
        "actions": str(act_space.dtype),
        "rewards": "float64",
        **dict(a.get("minari_dtypes") or {}),
    }
    seeds = _export_seeds(demos)
    options = a.get("minari_reset_options") or [None] * demos.n_episodes
    for i, sl in enumerate(demos.episode_slices()):
        if sl.stop - sl.start > 1 and not np.array_equal(
            demos.obs[sl][1:], demos.next_obs[sl][:-1]
        ):
            raise ValueError(
                f"episode {i} of {store}: next_obs[t] != obs[t+1] within the episode, so it "
                "has no single T+1 observation sequence (Minari's layout); not exported"
            )
    buffers = []
    for i, sl in enumerate(demos.episode_slices()):
        observations = np.concatenate([demos.obs[sl], demos.next_obs[sl][-1:]])
        buffers.append(
            episode_buffer(
                id=i,
                seed=seeds[i],
                options=options[i],
                observations=observations.astype(dtypes["observations"]),
                actions=demos.action[sl].astype(dtypes["actions"]),
                rewards=demos.reward[sl].astype(dtypes["rewards"]),
                terminations=demos.terminated[sl],
                truncations=demos.truncated[sl],
                infos={},
            )
        )
    if "minari_metadata" in a:  # imported from Minari: its provenance as it was
        md = dict(a["minari_metadata"])
        for key in ("author", "author_email"):
            if isinstance(md.get(key), list):
                md[key] = set(md[key])
    else:
        md = {
            "algorithm_name": a.get("expert_algorithm"),
            "description": f"{demos.n_episodes} {demos.env_id} episodes exported from the "
            f"sd2ail-reward demo store {Path(store).name}",
        }
    eval_spec = a.get("minari_eval_env_spec")
    with warnings.catch_warnings():
        # Minari warns about every provenance field left None (author, permalink, ...).
        warnings.filterwarnings("ignore", message=".*is set to None.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*env_spec is None.*", category=UserWarning)
        dataset = minari.create_dataset_from_buffers(
            dataset_id=dataset_id,
            buffer=buffers,
            env=spec,
            eval_env=gym.envs.registration.EnvSpec.from_json(eval_spec) if eval_spec else None,
            observation_space=obs_space,
            action_space=act_space,
            data_format=data_format,
            **{k: v for k, v in md.items() if v is not None},
        )
    stored_attrs = {k: v for k, v in a.items() if k != "selected_episodes"}
    dataset.storage.update_metadata({ATTRS_KEY: json.dumps(_json_safe(stored_attrs))})
    return MinariExport(
        dataset_id=dataset_id,
        path=Path(dataset.storage.data_path).parent,
        env_id=demos.env_id,
        n_episodes=demos.n_episodes,
        n_steps=int(demos.episode_ends[-1]),
    )
