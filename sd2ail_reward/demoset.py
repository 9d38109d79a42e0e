"""`DemoSet`: expert demonstrations as in-memory arrays, flat over steps.

Kept apart from the zarr reader (`demos.py`) so that the engine (`learner.py`) imports neither
zarr nor gymnasium: a learner can be built from arrays made anywhere (tests, other stores).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["DemoSet", "episode_returns"]

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]


def episode_returns(reward: npt.NDArray[Any], ends: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Undiscounted return per episode, summed in float64; `ends` are exclusive cumulative
    ends (episode i = rows [ends[i-1], ends[i]))."""
    if ends.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    return np.add.reduceat(reward[: int(ends[-1])].astype(np.float64), starts)


@dataclass(frozen=True)
class DemoSet:
    """Episodes flat over steps (rows of episode i: ``episode_slices()[i]``).

    `attrs` are the store's root attrs (at least ``env_id``, ``action_low``, ``action_high``),
    plus ``selected_episodes`` when read from a store: the store indices of the episodes held
    here, in order.
    """

    obs: F32
    action: F32
    next_obs: F32
    reward: F32
    terminated: Bool
    truncated: Bool
    episode_ends: I64
    reset_seeds: I64
    attrs: dict[str, Any]

    @property
    def env_id(self) -> str:
        return str(self.attrs["env_id"])

    @property
    def n_episodes(self) -> int:
        return int(self.episode_ends.shape[0])

    @property
    def obs_dim(self) -> int:
        return int(self.obs.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.action.shape[1])

    @property
    def action_low(self) -> F32:
        """Env-space lower action bounds recorded with the demos (the learner scales with
        these, so stored actions keep the space the env takes them in)."""
        return np.asarray(self.attrs["action_low"], dtype=np.float32)

    @property
    def action_high(self) -> F32:
        return np.asarray(self.attrs["action_high"], dtype=np.float32)

    @property
    def episode_returns(self) -> npt.NDArray[np.float64]:
        """Undiscounted return of each episode, summed in float64 from the stored rewards."""
        return episode_returns(self.reward, self.episode_ends)

    def subsampled(self, every: int) -> DemoSet:
        """Every `every`-th (s, a) pair of each episode, from its first step on: GAIL's
        protocol (Ho & Ermon, 2016, subsample 20), under which behaviour cloning from one
        trajectory no longer suffices. Each kept row keeps its own next_obs, reward and flags;
        `attrs["subsample"]` records `every`. every = 1 returns the set unchanged."""
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"subsample must be a positive int, got {every!r}")
        if every == 1:
            return self
        rows = np.concatenate(
            [np.arange(part.start, part.stop, every) for part in self.episode_slices()]
        )
        lengths = [len(range(part.start, part.stop, every)) for part in self.episode_slices()]
        return DemoSet(
            obs=self.obs[rows],
            action=self.action[rows],
            next_obs=self.next_obs[rows],
            reward=self.reward[rows],
            terminated=self.terminated[rows],
            truncated=self.truncated[rows],
            episode_ends=np.cumsum(lengths).astype(np.int64),
            reset_seeds=self.reset_seeds,
            attrs={**self.attrs, "subsample": every},
        )

    def episode_slices(self) -> list[slice]:
        starts = np.concatenate([[0], self.episode_ends[:-1]])
        return [slice(int(s), int(e)) for s, e in zip(starts, self.episode_ends, strict=True)]
