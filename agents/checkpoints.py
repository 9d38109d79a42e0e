"""SAC checkpoints of a training run: networks, optimisers, RNG, replay buffer and counters,
as one generation of the project's `CheckpointStore` (sha256 manifest, atomic rename, LATEST
pointer, fallback to the previous generation), loaded with `weights_only=True`; and the carry,
a checkpoint small enough to commit, with which a run too long for one machine goes on on
the next."""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from tianshou.algorithm import SAC
from tianshou.algorithm.modelfree.sac import AutoAlpha
from tianshou.data import Batch, ReplayBuffer

from sd2ail_reward.checkpoint import Checkpoint, CheckpointStore


@dataclass
class TrainState:
    """Counters saved with every checkpoint."""

    env_step: int = 0
    n_updates: int = 0
    n_episodes: int = 0
    wall_time: float = 0.0
    """Seconds since the run started, summed over all sessions (resumes)."""
    best_return: float | None = None
    best_step: int = 0
    update_debt: float = 0.0
    """Always 0 in `train` (whole SAC updates per env step); kept so that older checkpoints load."""
    server_generation: str = ""
    """The reward server's checkpoint written with this one (`train`), so a resume pairs them."""


def _flatten_batch(batch: Batch, prefix: str, n: int, out: dict[str, np.ndarray]) -> None:
    for key, value in batch.items():
        name = f"{prefix}{key}"
        if isinstance(value, Batch):
            if len(value.get_keys()) == 0:
                out[f"{name}/__empty__"] = np.zeros(0)
            _flatten_batch(value, f"{name}/", n, out)
        else:
            out[name] = np.ascontiguousarray(np.asarray(value)[:n])


def _unflatten_batch(arrays: dict[str, np.ndarray], prefix: str, maxsize: int) -> Batch:
    tree: dict[str, Any] = {}
    for name, arr in arrays.items():
        if not name.startswith(prefix):
            continue
        *parents, leaf = name[len(prefix) :].split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        if leaf != "__empty__":
            full = np.zeros((maxsize, *arr.shape[1:]), dtype=arr.dtype)
            full[: len(arr)] = arr
            node[leaf] = full

    def to_batch(d: dict[str, Any]) -> Batch:
        b = Batch()
        for k, v in d.items():
            b[k] = to_batch(v) if isinstance(v, dict) else v
        return b

    return to_batch(tree)


def buffer_arrays(buffer: ReplayBuffer) -> dict[str, np.ndarray]:
    """The filled part of a ReplayBuffer (slots 0..len-1, in slot order) + its sampler state."""
    rng = buffer._random_state.get_state(legacy=False)
    out: dict[str, np.ndarray] = {
        "maxsize": np.array(buffer.maxsize),
        "size": np.array(len(buffer)),
        "insertion_idx": np.array(buffer._insertion_idx),
        "rng_key": np.asarray(rng["state"]["key"]),
        "rng_pos": np.array(rng["state"]["pos"]),
        "rng_has_gauss": np.array(rng["has_gauss"]),
        "rng_gauss": np.array(rng["gauss"]),
    }
    _flatten_batch(cast(Batch, buffer._meta), "data/", len(buffer), out)
    return out


def restore_buffer(buffer: ReplayBuffer, arrays: dict[str, np.ndarray]) -> None:
    """Inverse of `buffer_arrays`. The episode that was running when the checkpoint was taken
    cannot continue (the env restarts), so its last stored transition is marked truncated."""
    if int(arrays["maxsize"]) != buffer.maxsize:
        raise ValueError(f"checkpoint buffer size {int(arrays['maxsize'])} != {buffer.maxsize}")
    size, insertion_idx = int(arrays["size"]), int(arrays["insertion_idx"])
    if size > 0:
        buffer.set_batch(cast(Any, _unflatten_batch(arrays, "data/", buffer.maxsize)))
    buffer._size, buffer._insertion_idx = size, insertion_idx
    buffer.last_index = np.array([(insertion_idx - 1) % buffer.maxsize])
    buffer._ep_return, buffer._ep_len, buffer._ep_start_idx = 0.0, 0, insertion_idx
    if size > 0:
        last = int(buffer.last_index[0])
        if not bool(buffer._meta.done[last]):
            buffer._meta.truncated[last] = True
            buffer._meta.done[last] = True
    buffer._random_state.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": arrays["rng_key"], "pos": int(arrays["rng_pos"])},
            "has_gauss": int(arrays["rng_has_gauss"]),
            "gauss": float(arrays["rng_gauss"]),
        }
    )


def save_sac_checkpoint(
    store: CheckpointStore, algorithm: SAC, buffer: ReplayBuffer, state: TrainState
) -> Path:
    """One generation at `state.env_step`; the counters go in its meta."""
    alpha_optim = (
        algorithm.alpha._optim.state_dict() if isinstance(algorithm.alpha, AutoAlpha) else {}
    )
    payload = {
        "algorithm": algorithm.state_dict(),  # networks, target networks, optimisers
        "alpha_optim": alpha_optim,  # AutoAlpha's Adam is not in algorithm.state_dict()
        "torch_rng": torch.get_rng_state(),
        "buffer": {
            name: torch.from_numpy(np.array(arr))  # a copy, 0-d kept 0-d
            for name, arr in buffer_arrays(buffer).items()
        },
    }
    return store.save(payload, step=state.env_step, meta=asdict(state))


def restore_sac_checkpoint(
    checkpoint: Checkpoint, algorithm: SAC, buffer: ReplayBuffer
) -> TrainState:
    """Loads a `save_sac_checkpoint` generation into `algorithm` and `buffer`."""
    payload = checkpoint.state
    algorithm.load_state_dict(payload["algorithm"])
    if isinstance(algorithm.alpha, AutoAlpha):
        algorithm.alpha._optim.load_state_dict(payload["alpha_optim"])
    torch.set_rng_state(payload["torch_rng"])
    restore_buffer(buffer, {name: t.numpy() for name, t in payload["buffer"].items()})
    return TrainState(**checkpoint.meta)


def sac_checkpoint_store(run_dir: Path) -> CheckpointStore:
    return CheckpointStore(run_dir / "checkpoints", keep=2)


CARRIED_FIELDS = ("obs", "act", "obs_next", "rew", "terminated", "truncated", "done")
"""What SAC's update reads of a transition; the env's info is left behind."""
CARRIED_RUN_FILES = ("actor_spec.json", "best_actor.pt", "best_actor.json")
"""Beside the checkpoint: the best actor so far, which `demos record` records from."""


def newest_transitions(arrays: dict[str, np.ndarray], keep: int) -> dict[str, np.ndarray]:
    """`buffer_arrays` cut to its newest `keep` transitions (oldest first, in slots 0..keep-1),
    SAC's fields only, float64 observations as float32: the buffer of a carry. The sampler's
    RNG state goes with it."""
    size, insertion_idx = int(arrays["size"]), int(arrays["insertion_idx"])
    kept = min(keep, size)
    slots = (insertion_idx - kept + np.arange(kept)) % max(size, 1)
    out = {name: arr for name, arr in arrays.items() if not name.startswith("data/")}
    out["size"], out["insertion_idx"] = np.array(kept), np.array(kept % int(arrays["maxsize"]))
    for field in CARRIED_FIELDS:
        column = arrays[f"data/{field}"][slots]
        out[f"data/{field}"] = column.astype(np.float32) if column.dtype == np.float64 else column
    return out


NEXT_OBS_BREAKS, NEXT_OBS_ROWS = "carry/obs_next_breaks", "carry/obs_next_rows"
"""A carry's obs_next: only the rows that are not the next row's obs (`split_next_obs`)."""


def split_next_obs(obs_ND: np.ndarray, obs_next_ND: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Within an episode obs_next[i] is obs[i + 1]: only the other rows (episode ends, the
    newest row) need storing, which takes a third off an expert's carry (Ant-v5: 4.2 of 13 MB
    a session, committed). Returns their indices and rows; `join_next_obs` is exact."""
    follows_N = np.zeros(len(obs_ND), dtype=bool)
    follows_N[:-1] = (obs_next_ND[:-1] == obs_ND[1:]).all(axis=1)
    breaks = np.flatnonzero(~follows_N)
    return breaks, obs_next_ND[breaks]


def join_next_obs(obs_ND: np.ndarray, breaks: np.ndarray, rows_KD: np.ndarray) -> np.ndarray:
    obs_next_ND = np.empty_like(obs_ND)
    obs_next_ND[:-1] = obs_ND[1:]
    obs_next_ND[breaks] = rows_KD
    return obs_next_ND


SERVER_DIR = "server"
"""Where `train` keeps its reward server's checkpoints, in the run dir and in a carry."""


def write_carry(run_dir: Path, out_dir: Path, keep: int) -> dict[str, Any]:
    """The run's newest SAC checkpoint with its buffer cut to `keep` transitions
    (`newest_transitions`), plus its best actor, into `out_dir` (replaced); returns the
    checkpoint's counters. A run against a reward server carries, whole, the server
    generation saved with that checkpoint (discriminator, PEDR and agent buffers: the
    resumed server must not start from scratch, nor from a newer generation)."""
    checkpoint = sac_checkpoint_store(run_dir).load_latest()
    paired = str(checkpoint.meta.get("server_generation", ""))
    server_gen = run_dir / SERVER_DIR / paired
    if (run_dir / SERVER_DIR).exists() and not (paired and server_gen.is_dir()):
        raise ValueError(
            f"{run_dir} trains against a reward server, but its newest SAC checkpoint names "
            f"no server generation that is there ({paired!r}): nothing consistent to carry"
        )
    payload = dict(checkpoint.state)
    buffer = {name: t.numpy() for name, t in payload["buffer"].items()}
    kept = newest_transitions(buffer, keep)
    kept[NEXT_OBS_BREAKS], kept[NEXT_OBS_ROWS] = split_next_obs(
        kept["data/obs"], kept.pop("data/obs_next")
    )
    payload["buffer"] = {name: torch.from_numpy(np.array(arr)) for name, arr in kept.items()}
    payload["meta"] = dict(checkpoint.meta)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    torch.save(payload, out_dir / "checkpoint.pt")
    for name in CARRIED_RUN_FILES:
        if (run_dir / name).exists():
            shutil.copyfile(run_dir / name, out_dir / name)
    if (run_dir / SERVER_DIR).exists():
        shutil.copytree(server_gen, out_dir / SERVER_DIR / paired)
    return dict(checkpoint.meta)


def read_carry(carry_dir: Path, run_dir: Path) -> Checkpoint:
    """Installs a `write_carry` into `run_dir` as its newest SAC checkpoint (and its best
    actor, and the reward server's generation paired with it), so that `train --resume` goes
    on from it; the run's config.json and metrics.csv must be put there from its archive."""
    payload = torch.load(carry_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    meta = payload.pop("meta")
    buffer = payload["buffer"]
    if NEXT_OBS_BREAKS in buffer:  # else an older carry (before 8482485): obs_next whole
        buffer["data/obs_next"] = torch.from_numpy(
            join_next_obs(
                buffer["data/obs"].numpy(),
                buffer.pop(NEXT_OBS_BREAKS).numpy(),
                buffer.pop(NEXT_OBS_ROWS).numpy(),
            )
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in CARRIED_RUN_FILES:
        if (carry_dir / name).exists():
            shutil.copyfile(carry_dir / name, run_dir / name)
    carried_server = carry_dir / SERVER_DIR
    if carried_server.is_dir():
        # the generation the checkpoint names (`train --resume` hands it to the server)
        server_store = CheckpointStore(run_dir / SERVER_DIR)
        server_store.adopt(carried_server / str(meta["server_generation"]))
    store = sac_checkpoint_store(run_dir)
    store.save(payload, step=int(meta["env_step"]), meta=meta)
    return store.load_latest()
