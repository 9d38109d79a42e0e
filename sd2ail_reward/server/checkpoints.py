"""The server's checkpoint generations: what goes into one, when one is due, whether the last
one still holds the current state.

A generation is `learner.state_dict()` plus meta: the last ingested sequences per client (so
pushes stay idempotent across a restart), the push total and the demo selection. The host
captures both under its learner lock, so they come from one moment; writing happens outside it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sd2ail_reward.checkpoint import CheckpointStore
from sd2ail_reward.learner import RewardLearner
from sd2ail_reward.server.metrics import ServingMetrics
from sd2ail_reward.server.options import ServeOptions, package_version

__all__ = ["Captured", "CheckpointKeeper", "Saved"]

logger = logging.getLogger(__name__)


@dataclass
class Captured:
    """A consistent copy of everything a checkpoint holds."""

    state: dict[str, Any]
    step: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Saved:
    """What SaveCheckpoint answers."""

    generation: str
    step: int
    total_pushed: int


class CheckpointKeeper:
    """The `--checkpoint-dir` store (None without one) and the progress of its last save."""

    def __init__(self, options: ServeOptions, metrics: ServingMetrics) -> None:
        self.store = (
            CheckpointStore(options.checkpoint_dir, keep=options.keep_checkpoints)
            if options.checkpoint_dir is not None
            else None
        )
        self._every = options.checkpoint_every
        self._metrics = metrics
        self.demos: dict[str, Any] = {}
        """Demo path and selected episodes of the learner (checked again on resume)."""
        self._last: tuple[int, int] | None = None  # (updates, rows pushed) of the last save

    def resumed(self, learner: RewardLearner, meta: dict[str, Any]) -> None:
        """The learner came from a checkpoint with `meta`: it is saved already."""
        if meta:
            total = int(meta.get("total_pushed", learner.agent.total_added))
            self._last = (learner.n_updates, total)

    def due(self, updates: int) -> bool:
        """A periodic generation is due after this many updates."""
        return self.store is not None and self._every > 0 and updates % self._every == 0

    def unchanged(self, updates: int, pushed: int) -> bool:
        """The last generation written holds this progress already."""
        return self._last == (updates, pushed)

    def capture(
        self, learner: RewardLearner, sequences: dict[str, list[int]], pushed: int
    ) -> Captured:
        """State and meta now (the caller holds the learner lock)."""
        meta = {
            "server_version": package_version(),
            "env_id": learner.env_id,
            "algo": learner.algo,
            "model_version": learner.model_version,
            "total_pushed": pushed,
            "push_sequences": sequences,
            "demos": self.demos,
        }
        return Captured(state=learner.state_dict(), step=learner.n_updates, meta=meta)

    def write(self, captured: Captured) -> Saved:
        assert self.store is not None
        path: Path = self.store.save(captured.state, step=captured.step, meta=captured.meta)
        pushed = int(captured.meta["total_pushed"])
        self._last = (captured.step, pushed)
        self._metrics.checkpoint(path.name)
        logger.info("checkpoint %s (step %d)", path.name, captured.step)
        return Saved(path.name, captured.step, pushed)
