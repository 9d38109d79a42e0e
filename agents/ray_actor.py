"""The worker side of agents/ray_workers.py: what runs inside each Ray actor.

Kept apart from ray_workers.py so that an actor's process imports only Gymnasium and the
reward client, never Tianshou or torch (importing Tianshou took 13 s of wall time per worker
process on the busy 2-core CI machine).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym

from sd2ail_reward import RewardClient, SD2AILRewardWrapper

__all__ = ["EnvActor", "WrappedEnvFactory"]


@dataclass(frozen=True)
class WrappedEnvFactory:
    """Builds ``SD2AILRewardWrapper(gym.make(env_id, **env_kwargs), RewardClient(address))``
    where it is called (inside a Ray actor). Small and picklable: pass it, not a bound method
    of a trainer (which would be pickled whole).

    `token` None: the worker's ``SD2AIL_REWARD_TOKEN`` environment variable (see the module
    doc). `tls_ca`: PEM bytes of the server's CA certificate, for a TLS server.
    """

    env_id: str
    address: str
    token: str | None = field(default=None, repr=False)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    push_batch: int = 256
    score_steps: bool = True
    tls_ca: bytes | None = field(default=None, repr=False)
    timeout_s: float = 10.0

    def __call__(self) -> SD2AILRewardWrapper:
        client = RewardClient(
            self.address,
            token=self.token,
            timeout_s=self.timeout_s,
            root_certificates=self.tls_ca,
        )
        env = gym.make(self.env_id, **self.env_kwargs)
        return SD2AILRewardWrapper(
            env, reward=client, push_batch=self.push_batch, score_steps=self.score_steps
        )


class EnvActor:
    """The Ray actor behind one worker: owns one wrapped env (built here from the factory)
    and counts what it did. Method names match what Tianshou's `RayEnvWorker` calls."""

    def __init__(self, env_fn: Callable[[], gym.Env[Any, Any]]) -> None:
        self.env = env_fn()
        self.steps = 0
        self.episodes = 0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self.episodes += 1
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        self.steps += 1
        return self.env.step(action)

    def get_env_attr(self, key: str) -> Any:
        return getattr(self.env, key)

    def set_env_attr(self, key: str, value: Any) -> None:
        setattr(self.env.unwrapped, key, value)

    def render(self, **kwargs: Any) -> Any:
        return self.env.render()

    def flush(self) -> None:
        """Push the wrapper's buffered transitions now (the last partial push batch)."""
        flush = getattr(self.env, "flush", None)
        if flush is not None:
            flush()

    def counters(self) -> dict[str, Any]:
        """Env steps and resets seen, transitions pushed, and where this actor runs."""
        import ray

        return {
            "steps": self.steps,
            "resets": self.episodes,
            "pushed": int(getattr(self.env, "n_pushed", 0)),
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
        }

    def close(self) -> None:
        self.env.close()  # the reward wrapper flushes its last pushes here
