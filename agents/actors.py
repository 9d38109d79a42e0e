"""Saved actors: weights of tensors only, a spec to rebuild them, and the deterministic policy
that demos are recorded with."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import gymnasium as gym
import numpy as np
import torch
from tianshou.algorithm.modelfree.sac import SACPolicy
from tianshou.data import Batch
from tianshou.data.types import ObsBatchProtocol

from agents.networks import make_actor, make_policy
from agents.recipes import TrainArgs
from agents.run_files import save_tensors, write_json


def actor_spec(
    args: TrainArgs, obs_space: gym.spaces.Box, act_space: gym.spaces.Box
) -> dict[str, Any]:
    """Everything `policy_from_spec` needs to rebuild the deterministic expert."""
    return {
        "env_id": args.env,
        "obs_shape": list(obs_space.shape),
        "action_shape": list(act_space.shape),
        "hidden_sizes": list(args.hidden_sizes),
        "action_low": act_space.low.tolist(),
        "action_high": act_space.high.tolist(),
        "actor": "tianshou ContinuousActorProbabilistic(unbounded=True, conditioned_sigma=True)",
        "action_mapping": "a_env = low + (high - low) * (tanh(mu(obs)) + 1) / 2",
    }


def policy_from_spec(spec: dict[str, Any], actor_state: dict[str, torch.Tensor]) -> SACPolicy:
    """The policy of a saved actor; an actor trained on normalised observations carries its
    statistics as buffers (`InputScaledNet`), so the state dict alone tells which it is."""
    obs_stats = None
    if "preprocess.input_shift" in actor_state:
        obs_dim = int(np.prod(spec["obs_shape"]))
        obs_stats = (np.zeros(obs_dim, np.float32), np.ones(obs_dim, np.float32))
    actor = make_actor(spec["obs_shape"], spec["action_shape"], spec["hidden_sizes"], obs_stats)
    actor.load_state_dict(actor_state)
    action_space = gym.spaces.Box(
        low=np.asarray(spec["action_low"], dtype=np.float32),
        high=np.asarray(spec["action_high"], dtype=np.float32),
        dtype=np.float32,
    )
    return make_policy(actor, action_space)


def deterministic_policy_fn(policy: SACPolicy) -> Callable[[np.ndarray], np.ndarray]:
    """obs (O,) -> env action (A,): the same computation as Tianshou's Collector in a
    deterministic evaluation (policy forward outside a training step gives tanh(mu); then
    `policy.map_action`), so the actions returned are exactly what the env receives."""
    policy.eval()

    def act(obs: np.ndarray) -> np.ndarray:
        batch = cast(ObsBatchProtocol, Batch(obs=np.asarray(obs)[None], info=Batch()))
        with torch.no_grad():
            raw = policy(batch).act
        raw_np = raw.cpu().numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
        return np.asarray(policy.map_action(raw_np)[0])

    return act


def save_actor(run_dir: Path, name: str, actor: torch.nn.Module, info: dict[str, Any]) -> None:
    """`<name>.pt` (state_dict of tensors only) and `<name>.json` (its evaluation)."""
    state = {k: v.detach().cpu().clone() for k, v in actor.state_dict().items()}
    save_tensors(run_dir / f"{name}.pt", state)
    write_json(run_dir / f"{name}.json", info)
