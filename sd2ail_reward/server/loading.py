"""Where a server's learner comes from: a ready RewardLearner, or demos plus (on resume) a
checkpoint generation.

Runs in the loader thread after the server binds, so health can say NOT_SERVING meanwhile.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sd2ail_reward.checkpoint import Checkpoint, CheckpointError, CheckpointStore
from sd2ail_reward.learner import RewardLearner
from sd2ail_reward.server.options import LearnerSpec, ServeOptions, resolve_device

__all__ = ["Loaded", "load_learner"]

logger = logging.getLogger(__name__)


@dataclass
class Loaded:
    """A learner ready to serve, the meta of the checkpoint it resumed (empty when fresh) and
    the demo selection it was built from (kept in every checkpoint it writes)."""

    learner: RewardLearner
    meta: dict[str, Any] = field(default_factory=dict)
    demos: dict[str, Any] = field(default_factory=dict)


def _checkpoint(options: ServeOptions, store: CheckpointStore | None) -> Checkpoint | None:
    """The generation to resume from, if any (says which and why)."""
    if store is None:
        return None
    if options.resume_generation:
        ckpt = store.load(options.resume_generation)
        logger.info(
            "resuming from checkpoint %s (step %d, named by --resume-from)", ckpt.path, ckpt.step
        )
        return ckpt
    if not options.resume:
        return None
    if not store.generations():
        logger.info("--resume: no checkpoint in %s yet, starting fresh", store.root)
        return None
    ckpt = store.load_latest()
    logger.info("resuming from checkpoint %s (step %d, the latest)", ckpt.path, ckpt.step)
    return ckpt


def load_learner(
    source: RewardLearner | LearnerSpec, options: ServeOptions, store: CheckpointStore | None
) -> Loaded:
    """Build (or take) the learner and restore the checkpoint the options ask for.

    A checkpoint's own learner configuration and seed win over the spec's, and it must have
    been trained on the same demo episodes (CheckpointError otherwise)."""
    ckpt = _checkpoint(options, store)
    demo_meta: dict[str, Any] = {}
    if isinstance(source, RewardLearner):
        learner = source
    else:
        from sd2ail_reward.demos import read_demos  # zarr: only when reading a store

        demos = read_demos(
            source.demos,
            num_episodes=source.num_demos,
            select=source.select,
            seed=source.demo_seed,
            expected_env_id=source.config.env_id or None,
            episodes=source.episodes,
        ).subsampled(source.subsample)
        selected = list(demos.attrs.get("selected_episodes", []))
        demo_meta = {
            "path": str(source.demos),
            "selected_episodes": selected,
            "subsample": source.subsample,
        }
        config, seed = source.config, source.seed
        if ckpt is not None:
            saved = ckpt.meta.get("demos", {}).get("selected_episodes")
            saved_subsample = ckpt.meta.get("demos", {}).get("subsample", 1)
            if saved_subsample != source.subsample:
                raise CheckpointError(
                    f"checkpoint {ckpt.path.name} was trained on every {saved_subsample}th "
                    f"demo pair, this server keeps every {source.subsample}th; start it with "
                    "the same --demo-subsample"
                )
            if saved is not None and saved != selected:
                raise CheckpointError(
                    f"checkpoint {ckpt.path.name} was trained on demo episodes {saved}, "
                    f"this server selected {selected} from {source.demos}; start it with the "
                    "same --demos / --num-demos"
                )
            config = RewardLearner.config_from_state(ckpt.state)
            seed = int(ckpt.state.get("seed", source.seed))
        learner = RewardLearner(config, demos, device=resolve_device(source.device), seed=seed)
    if ckpt is None:
        return Loaded(learner, {}, demo_meta)
    learner.load_state_dict(ckpt.state)
    return Loaded(learner, dict(ckpt.meta), demo_meta)
