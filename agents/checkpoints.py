"""SAC checkpoints of a training run: networks, optimisers, RNG, replay buffer and counters,
as one generation of the project's `CheckpointStore` (sha256 manifest, atomic rename, LATEST
pointer, fallback to the previous generation), loaded with `weights_only=True`."""

from __future__ import annotations

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
