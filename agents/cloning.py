"""Behaviour cloning on the demos: the actor's squashed mean action regressed onto the demo
actions. Serves the BC baseline, a BC start of SAC's actor, and TD3+BC's cloning term."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import torch

from sd2ail_reward.demos import DemoSet

log = logging.getLogger("sd2ail.train")


class DemoCloningLoss:
    """Mean squared error between the actor's squashed mean action and the demo actions
    (scaled to [-1, 1]), on the demo pairs at `idx`."""

    def __init__(self, demos: DemoSet, act_space: gym.spaces.Box) -> None:
        low, high = act_space.low, act_space.high
        self.target = torch.as_tensor(2 * (demos.action - low) / (high - low) - 1).float()
        self.obs = np.asarray(demos.obs, dtype=np.float32)

    def __call__(self, actor: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
        (mu, _), _ = actor(self.obs[idx.numpy()])
        return (torch.tanh(mu) - self.target[idx]).pow(2).mean()


def behaviour_cloning(
    actor: torch.nn.Module, demos: DemoSet, act_space: gym.spaces.Box, epochs: int, seed: int
) -> Iterator[int]:
    """Regresses the actor's squashed mean action onto the demo actions; yields after each
    epoch so that the caller can evaluate."""
    cloning_loss = DemoCloningLoss(demos, act_space)
    optim = torch.optim.Adam(actor.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(1, epochs + 1):
        for idx in torch.randperm(len(cloning_loss.obs), generator=gen).split(256):
            loss = cloning_loss(actor, idx)
            optim.zero_grad()
            loss.backward()
            optim.step()
        yield epoch
