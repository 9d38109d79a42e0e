"""Validation of transition batches at the library's edge.

The one validation path for transitions: the learner, its scoring snapshots and (through
them) the server validate with `check_transitions`, so a bad batch is refused with one message
format, before any state changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TransitionBatch:
    """Validated float32 batch; `next_obs_BO` may be absent."""

    obs_BO: np.ndarray
    act_BA: np.ndarray
    next_obs_BO: np.ndarray | None

    def __len__(self) -> int:
        return int(self.obs_BO.shape[0])


def as_matrix(name: str, value: object, dim: int, *, max_rows: int | None = None) -> np.ndarray:
    """`value` as a finite float32 (B, dim) array with B >= 1, or a ValueError saying why."""
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: expected a float array of shape (B, {dim}), got {err}") from err
    if array.ndim != 2 or array.shape[1] != dim:
        raise ValueError(f"{name}: expected shape (B, {dim}), got {tuple(array.shape)}")
    if array.shape[0] == 0:
        raise ValueError(f"{name}: expected at least one row, got an empty batch")
    if max_rows is not None and array.shape[0] > max_rows:
        raise ValueError(f"{name}: batch of {array.shape[0]} rows exceeds the limit {max_rows}")
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).any(axis=1).sum())
        raise ValueError(f"{name}: expected finite values, got NaN or Inf in {bad} row(s)")
    return array


def check_transitions(
    obs: object,
    act: object,
    next_obs: object | None,
    *,
    obs_dim: int,
    act_dim: int,
    require_next_obs: bool = False,
    max_rows: int | None = None,
) -> TransitionBatch:
    """Validate a batch of (obs, act[, next_obs]) with one batch size B, or raise ValueError.

    Episode ends are not part of a transition here: the discriminator scores (s, a[, s'])."""
    obs_BO = as_matrix("obs", obs, obs_dim, max_rows=max_rows)
    act_BA = as_matrix("action", act, act_dim, max_rows=max_rows)
    rows = obs_BO.shape[0]
    if act_BA.shape[0] != rows:
        raise ValueError(f"action: expected {rows} rows to match obs, got {act_BA.shape[0]}")
    next_obs_BO = None
    if next_obs is not None:
        next_obs_BO = as_matrix("next_obs", next_obs, obs_dim, max_rows=max_rows)
        if next_obs_BO.shape[0] != rows:
            raise ValueError(
                f"next_obs: expected {rows} rows to match obs, got {next_obs_BO.shape[0]}"
            )
    elif require_next_obs:
        raise ValueError(
            "next_obs: required by this state-only discriminator "
            "(GetInfo.requires_next_obs on a server), got none"
        )
    return TransitionBatch(obs_BO=obs_BO, act_BA=act_BA, next_obs_BO=next_obs_BO)
