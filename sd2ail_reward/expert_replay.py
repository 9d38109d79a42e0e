"""`ExpertReplay`: PEDR's buffers for one learner, one prioritized buffer per expert
trajectory (so every trajectory contributes to each expert batch) plus one for pseudo-experts.
The prioritized buffer and its sum tree are `pedr.py`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from sd2ail_reward.config import PEDRConfig
from sd2ail_reward.pedr import (  # the buffer and its package-internal checks
    _RNG_KEY,
    PrioritizedBuffer,
    PrioritizedSample,
    StateDict,
    _check_count,
    _check_indices,
    _check_rows,
    _check_values,
    _parse_rng_state,
    _rng_state_json,
    _sd_get,
    _sd_int,
)


class ExpertReplay:
    """One prioritized buffer per expert trajectory plus one FIFO buffer of pseudo-experts.

    Per-trajectory buffers make every demonstration contribute the same number of rows to each
    expert batch whatever its length, and normalise IS weights per trajectory, as the reference
    does. All buffers draw from the one generator passed in. With `config.prioritized == False`
    alpha is 0: sampling is uniform, the IS weights are 1 and the priority updates do nothing
    (DiffAIL's replay).
    """

    def __init__(
        self,
        trajectories: Sequence[np.ndarray],
        *,
        config: PEDRConfig,
        pseudo_dim: int,
        rng: np.random.Generator,
    ) -> None:
        if len(trajectories) == 0:
            raise ValueError("trajectories must hold at least one (N_i, D) array, got none")
        dim = _check_count("pseudo_dim", pseudo_dim)
        self._prioritized = bool(config.prioritized)
        alpha = config.alpha if self._prioritized else 0.0
        checked = [_check_rows(f"trajectories[{i}]", t, dim) for i, t in enumerate(trajectories)]
        for i, traj in enumerate(checked):
            if traj.shape[0] == 0:
                raise ValueError(f"trajectories[{i}] must have at least one row, got 0")

        def make(capacity: int) -> PrioritizedBuffer:
            return PrioritizedBuffer(
                capacity,
                dim,
                alpha=alpha,
                beta0=config.beta0,
                beta_increment=config.beta_increment,
                eps=config.priority_eps,
                rng=rng,
            )

        self._rng = rng
        self._experts = [make(max(config.expert_capacity, t.shape[0])) for t in checked]
        for buf, traj in zip(self._experts, checked, strict=True):
            buf.add(traj)
        self._pseudo = make(config.pseudo_capacity)

    @property
    def n_trajectories(self) -> int:
        return len(self._experts)

    @property
    def expert_size(self) -> int:
        return sum(len(b) for b in self._experts)

    @property
    def pseudo_size(self) -> int:
        return len(self._pseudo)

    @property
    def prioritized(self) -> bool:
        return self._prioritized

    def sample_expert(self, batch_size: int) -> PrioritizedSample:
        """`batch_size // n_trajectories` rows (at least 1) from each trajectory, concatenated."""
        batch = _check_count("batch_size", batch_size)
        per = max(1, batch // len(self._experts))
        parts = [buf.sample(per) for buf in self._experts]
        return PrioritizedSample(
            x_BD=np.concatenate([s.x_BD for s in parts]),
            indices_B=np.concatenate([s.indices_B for s in parts]),
            weights_B=np.concatenate([s.weights_B for s in parts]),
            source_B=np.repeat(np.arange(len(parts), dtype=np.int64), per),
        )

    def sample_pseudo(self, batch_size: int) -> PrioritizedSample:
        _check_count("batch_size", batch_size)
        if len(self._pseudo) == 0:
            raise ValueError("cannot sample pseudo-experts: the pseudo-expert buffer is empty")
        return self._pseudo.sample(batch_size)

    def expert_rows(self) -> np.ndarray:
        """Every expert row, trajectory after trajectory (a copy)."""
        return np.concatenate([buf.latest(len(buf)) for buf in self._experts])

    def pseudo_latest(self, n: int) -> np.ndarray:
        """The `n` newest pseudo-expert rows, read without drawing from the RNG."""
        return self._pseudo.latest(n)

    def add_pseudo(self, x_ND: ArrayLike) -> None:
        self._pseudo.add(x_ND)

    def update_expert(self, sample: PrioritizedSample, d_train_B: ArrayLike) -> None:
        """Checked even in uniform mode, so a caller's shape bug surfaces in both modes."""
        n = len(self._experts)
        source = _check_indices("sample.source_B", sample.source_B, n)
        idx = np.asarray(sample.indices_B)
        if idx.shape != source.shape:
            raise ValueError(
                f"sample.indices_B must have shape {source.shape} like source_B, got {idx.shape}"
            )
        d = _check_values("d_train_B", d_train_B, source.shape[0])
        updates = [
            self._experts[i]._priorities_for(idx[source == i], d[source == i]) for i in range(n)
        ]
        if not self._prioritized:
            return
        for buf, (rows, p) in zip(self._experts, updates, strict=True):
            buf._tree._update(rows, p)

    def update_pseudo(self, sample: PrioritizedSample, d_train_B: ArrayLike) -> None:
        rows, p = self._pseudo._priorities_for(sample.indices_B, d_train_B)
        if self._prioritized:
            self._pseudo._tree._update(rows, p)

    def priority_summary(self) -> dict[str, float]:
        """For logging; pseudo statistics read 0 while the pseudo buffer is empty (pseudo_size)."""
        expert = np.concatenate([b.priorities() for b in self._experts])
        pseudo = self._pseudo.priorities()
        return {
            "expert_priority_mean": float(expert.mean()),
            "expert_priority_min": float(expert.min()),
            "expert_priority_max": float(expert.max()),
            "expert_beta": float(np.mean([b.beta for b in self._experts])),
            "pseudo_priority_mean": float(pseudo.mean()) if pseudo.size else 0.0,
            "pseudo_priority_min": float(pseudo.min()) if pseudo.size else 0.0,
            "pseudo_size": float(pseudo.size),
            "pseudo_beta": self._pseudo.beta,
        }

    def state_dict(self) -> StateDict:
        """Flat: `expert.{i}.{key}`, `pseudo.{key}`, `n_trajectories` and `rng_state` (JSON)."""
        sd: StateDict = {"n_trajectories": len(self._experts)}
        for i, buf in enumerate(self._experts):
            for key, value in buf.state_dict(include_rng=False).items():
                sd[f"expert.{i}.{key}"] = value
        for key, value in self._pseudo.state_dict(include_rng=False).items():
            sd[f"pseudo.{key}"] = value
        sd[_RNG_KEY] = _rng_state_json(self._rng)
        return sd

    def load_state_dict(self, sd: Mapping[str, object]) -> None:
        """Restore exactly; everything is checked before anything changes."""
        n = _sd_int(sd, "n_trajectories")
        if n != len(self._experts):
            raise ValueError(
                f"state_dict holds {n} trajectory buffers, this replay has {len(self._experts)}"
            )

        def sub(prefix: str) -> dict[str, object]:
            return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}

        parsed = [buf._parse_state(sub(f"expert.{i}.")) for i, buf in enumerate(self._experts)]
        parsed_pseudo = self._pseudo._parse_state(sub("pseudo."))
        rng_state = _parse_rng_state(self._rng, _sd_get(sd, _RNG_KEY))
        self._rng.bit_generator.state = rng_state
        for buf, state in zip(self._experts, parsed, strict=True):
            buf._apply_state(state)
        self._pseudo._apply_state(parsed_pseudo)
