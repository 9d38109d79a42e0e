"""The reward contract: what the Gymnasium wrappers need from a reward source.

`RewardLearner` (in process) and `RewardClient` (gRPC) both satisfy `RewardSource`
structurally, and so can any test stub: the wrappers depend on these protocols only and never
know whether the reward comes from the network or from the process.

Shapes: B = batch, O = observation dim, A = action dim. Observations and actions are
env-space float32 arrays, `obs_BO`, `act_BA`, `next_obs_BO`. Episode ends are not part of the
contract: the discriminator scores (s, a[, s']) only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = [
    "AgentBufferSink",
    "PushFn",
    "RewardSource",
    "TransitionPusher",
    "push_function",
]


@runtime_checkable
class RewardSource(Protocol):
    """Scores transitions: `reward(obs_BO, act_BA, next_obs_BO=None) -> float32 (B,)`.

    Raises ValueError on a malformed batch. State-only discriminators need `next_obs`.
    """

    def reward(
        self, obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray | None = None
    ) -> np.ndarray: ...


@runtime_checkable
class TransitionPusher(Protocol):
    """A source that accepts the agent's transitions for discriminator training over the
    wire (`RewardClient.push`)."""

    def push(
        self,
        obs: np.ndarray,
        act: np.ndarray,
        next_obs: np.ndarray | None = None,
    ) -> object: ...


@runtime_checkable
class AgentBufferSink(Protocol):
    """A source that keeps the agent's transitions in process (`RewardLearner.add_agent`)."""

    def add_agent(
        self,
        obs: np.ndarray,
        act: np.ndarray,
        next_obs: np.ndarray | None = None,
    ) -> object: ...


PushFn = Callable[[np.ndarray, np.ndarray, np.ndarray], object]
"""`push(obs_BO, act_BA, next_obs_BO)`, positional."""


def push_function(source: object) -> PushFn | None:
    """How to hand transitions to `source`: its `push` (a client), else its `add_agent` (an
    in-process learner), else None (the source cannot learn from the agent)."""
    if isinstance(source, TransitionPusher):
        return source.push
    if isinstance(source, AgentBufferSink):
        return source.add_agent
    return None
