"""Discriminator input layout and normalisation, fixed from the expert demos.

x = [action scaled to [-1, 1], obs normalised] (action first, as the reference), or
[obs, next_obs] normalised in state-only mode. Clients always speak env-space; only here do
values change space.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STD_FLOOR = 1e-3
"""Floor of the expert std: a single demo can leave a dimension almost constant, and dividing by
the reference's float32 eps would blow its noise up by 1e7."""


@dataclass(frozen=True)
class InputNormalizer:
    """Maps env-space (obs, act, next_obs) to discriminator rows and back."""

    obs_mean_O: np.ndarray
    obs_std_O: np.ndarray
    act_low_A: np.ndarray
    act_high_A: np.ndarray
    state_only: bool

    @classmethod
    def from_expert(
        cls,
        obs_NO: np.ndarray,
        act_low_A: np.ndarray,
        act_high_A: np.ndarray,
        *,
        normalize_obs: bool,
        state_only: bool,
    ) -> InputNormalizer:
        obs_dim = obs_NO.shape[1]
        if normalize_obs:
            mean = obs_NO.mean(axis=0)
            std = np.maximum(obs_NO.std(axis=0), STD_FLOOR)
        else:
            mean, std = np.zeros(obs_dim), np.ones(obs_dim)
        low = np.asarray(act_low_A, dtype=np.float64)
        high = np.asarray(act_high_A, dtype=np.float64)
        if low.shape != high.shape or not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise ValueError(f"action bounds must be finite and of one shape, got {low}, {high}")
        if (high <= low).any():
            raise ValueError(f"action bounds: expected low < high, got low={low} high={high}")
        return cls(
            obs_mean_O=mean.astype(np.float32),
            obs_std_O=std.astype(np.float32),
            act_low_A=low.astype(np.float32),
            act_high_A=high.astype(np.float32),
            state_only=state_only,
        )

    @property
    def obs_dim(self) -> int:
        return int(self.obs_mean_O.shape[0])

    @property
    def act_dim(self) -> int:
        return int(self.act_low_A.shape[0])

    @property
    def input_dim(self) -> int:
        return 2 * self.obs_dim if self.state_only else self.act_dim + self.obs_dim

    @property
    def action_dims(self) -> slice | None:
        """Columns of x that hold actions (clamped by the generator), None in state-only mode."""
        return None if self.state_only else slice(0, self.act_dim)

    def obs(self, obs_BO: np.ndarray) -> np.ndarray:
        return (obs_BO - self.obs_mean_O) / self.obs_std_O

    def action(self, act_BA: np.ndarray) -> np.ndarray:
        return 2.0 * (act_BA - self.act_low_A) / (self.act_high_A - self.act_low_A) - 1.0

    def rows(
        self, obs_BO: np.ndarray, act_BA: np.ndarray, next_obs_BO: np.ndarray | None
    ) -> np.ndarray:
        """Discriminator input rows x_BD (float32)."""
        if self.state_only:
            if next_obs_BO is None:
                raise ValueError("next_obs: required in state-only mode, got none")
            parts = [self.obs(obs_BO), self.obs(next_obs_BO)]
        else:
            parts = [self.action(act_BA), self.obs(obs_BO)]
        return np.concatenate(parts, axis=1).astype(np.float32)

    def split(self, x_BD: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of `rows`: env-space (obs, act), e.g. of pseudo-expert rows."""
        if self.state_only:
            return (
                x_BD[:, : self.obs_dim] * self.obs_std_O + self.obs_mean_O,
                np.zeros((x_BD.shape[0], 0), np.float32),
            )
        act_s = x_BD[:, : self.act_dim]
        act = (act_s + 1.0) / 2.0 * (self.act_high_A - self.act_low_A) + self.act_low_A
        obs = x_BD[:, self.act_dim :] * self.obs_std_O + self.obs_mean_O
        return obs.astype(np.float32), act.astype(np.float32)

    def state_dict(self) -> dict[str, np.ndarray | bool]:
        return {
            "obs_mean": self.obs_mean_O,
            "obs_std": self.obs_std_O,
            "act_low": self.act_low_A,
            "act_high": self.act_high_A,
            "state_only": self.state_only,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, object]) -> InputNormalizer:
        return cls(
            obs_mean_O=np.asarray(state["obs_mean"], np.float32),
            obs_std_O=np.asarray(state["obs_std"], np.float32),
            act_low_A=np.asarray(state["act_low"], np.float32),
            act_high_A=np.asarray(state["act_high"], np.float32),
            state_only=bool(state["state_only"]),
        )
