"""sd2ail-reward: SD2AIL adversarial imitation as a reward service for any RL agent.

Public surface: `RewardLearner` (in-process engine), `RewardClient` (gRPC client) and
`SD2AILRewardWrapper` (Gymnasium wrapper). Heavy modules are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["RewardClient", "RewardLearner", "SD2AILRewardWrapper", "__version__"]

_LAZY = {
    "RewardLearner": "sd2ail_reward.learner",
    "RewardClient": "sd2ail_reward.client",
    "SD2AILRewardWrapper": "sd2ail_reward.wrapper",
}

if TYPE_CHECKING:
    from sd2ail_reward.learner import RewardLearner


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sd2ail_reward' has no attribute {name!r}")
