"""SAC's networks: a tanh-Gaussian actor and Q critics, optionally seeing observations
normalised with the demos' statistics (inside the network, so envs, replay buffer and reward
server all keep raw observations)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tianshou.algorithm.modelfree.sac import SACPolicy
from tianshou.utils.net.common import Net
from tianshou.utils.net.continuous import ContinuousActorProbabilistic, ContinuousCritic

from agents.recipes import TrainArgs, policy_sees_normalized_obs
from sd2ail_reward.demos import DemoSet


def box_spaces(env_id: str) -> tuple[gym.spaces.Box, gym.spaces.Box]:
    """The observation and action spaces of a continuous-control env."""
    probe = gym.make(env_id)
    obs_space, act_space = probe.observation_space, probe.action_space
    probe.close()
    assert isinstance(obs_space, gym.spaces.Box) and isinstance(act_space, gym.spaces.Box)
    return obs_space, act_space


ObsStats = tuple[np.ndarray, np.ndarray]
"""(mean, std) of the observation dims, for networks that see normalised observations."""


def policy_obs_stats(args: TrainArgs, demos: DemoSet | None) -> ObsStats | None:
    """The demos' obs mean and std when SAC normalises observations (else None)."""
    if not policy_sees_normalized_obs(args):
        return None
    if demos is None:
        raise ValueError(
            "SAC on demo-normalised observations needs --demos (or --no-normalize-obs)"
        )
    obs = np.asarray(demos.obs, dtype=np.float64)
    return obs.mean(axis=0).astype(np.float32), obs.std(axis=0).astype(np.float32)


class InputScaledNet(Net):
    """`Net` on (x - shift) / scale. With the demos' obs mean and std this is the reference's
    `ScaledEnv` (`scale_env_with_demo_stats`) moved inside the network, so the envs, the
    replay buffer and the reward server all keep raw observations; the statistics are buffers,
    so a saved actor carries them. For a critic the input is [obs, act] and the action dims get
    shift 0 and scale 1 (the reference does not normalise actions)."""

    input_shift: torch.Tensor
    input_scale: torch.Tensor

    def __init__(self, *, shift: np.ndarray, scale: np.ndarray, **net_kwargs: Any) -> None:
        super().__init__(**net_kwargs)
        self.register_buffer("input_shift", torch.as_tensor(shift, dtype=torch.float32))
        self.register_buffer("input_scale", torch.as_tensor(scale, dtype=torch.float32))

    def forward(
        self, obs: Any, state: Any = None, info: dict[str, Any] | None = None
    ) -> tuple[torch.Tensor, Any]:
        x = torch.as_tensor(obs, device=self.input_shift.device, dtype=torch.float32)
        return super().forward((x - self.input_shift) / self.input_scale, state, info)


def _scale_of(std: np.ndarray) -> np.ndarray:
    """std + float32 eps, as the reference divides by."""
    return np.asarray(std, dtype=np.float32) + np.finfo(np.float32).eps


def make_actor(
    obs_shape: Sequence[int],
    act_shape: Sequence[int],
    hidden_sizes: Sequence[int],
    obs_stats: ObsStats | None = None,
) -> ContinuousActorProbabilistic:
    """Gaussian actor with state-dependent sigma; SACPolicy squashes its samples with tanh.
    With `obs_stats` it sees observations normalised by them."""
    kwargs: dict[str, Any] = dict(state_shape=tuple(obs_shape), hidden_sizes=hidden_sizes)
    net = (
        Net(**kwargs)
        if obs_stats is None
        else InputScaledNet(shift=obs_stats[0], scale=_scale_of(obs_stats[1]), **kwargs)
    )
    return ContinuousActorProbabilistic(
        preprocess_net=net,
        action_shape=tuple(act_shape),
        unbounded=True,
        conditioned_sigma=True,
    )


def make_critic(
    obs_shape: Sequence[int],
    act_shape: Sequence[int],
    hidden_sizes: Sequence[int],
    obs_stats: ObsStats | None = None,
    layer_norm: bool = False,
) -> ContinuousCritic:
    """Q(s, a) MLP; `layer_norm` puts a LayerNorm before each hidden activation, which bounds
    how far Q can extrapolate to inputs far from the data (Ball et al., 2023, RLPD)."""
    kwargs: dict[str, Any] = dict(
        state_shape=tuple(obs_shape),
        action_shape=tuple(act_shape),
        hidden_sizes=hidden_sizes,
        concat=True,
        norm_layer=torch.nn.LayerNorm if layer_norm else None,
    )
    if obs_stats is None:
        return ContinuousCritic(preprocess_net=Net(**kwargs))
    n_act = int(np.prod(act_shape))
    shift = np.concatenate([obs_stats[0], np.zeros(n_act)])
    scale = np.concatenate([_scale_of(obs_stats[1]), np.ones(n_act, dtype=np.float32)])
    return ContinuousCritic(preprocess_net=InputScaledNet(shift=shift, scale=scale, **kwargs))


def _uniform_(tensor: torch.Tensor, bound: float, gen: torch.Generator) -> None:
    with torch.no_grad():
        tensor.uniform_(-bound, bound, generator=gen)


def _linears(module: torch.nn.Module) -> list[torch.nn.Linear]:
    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)]


def rlkit_init_(
    actor: ContinuousActorProbabilistic,
    critics: Sequence[ContinuousCritic],
    gen: torch.Generator,
) -> None:
    """The reference's (rlkit's) initial weights, in place: hidden layers `fanin_init` with
    bias 0.1, the actor's mean and log-sigma heads uniform +-1e-3 (a policy that starts at
    mean 0, sigma 1) and each critic's output layer +-3e-3 (Q starts near 0). rlkit's
    `fanin_init` takes `weight.size(0)`, the layer's OUTPUT width, as its fan-in; kept so."""
    hidden = [*_linears(actor.preprocess)]
    heads = [*_linears(actor.mu), *_linears(actor.sigma)]
    for critic in critics:
        hidden += _linears(critic.preprocess)
    for layer in hidden:
        _uniform_(layer.weight, 1.0 / float(np.sqrt(layer.weight.shape[0])), gen)
        torch.nn.init.constant_(layer.bias, 0.1)
    outputs = [(layer, 1e-3) for layer in heads]
    outputs += [(layer, 3e-3) for critic in critics for layer in _linears(critic.last)]
    for layer, bound in outputs:
        _uniform_(layer.weight, bound, gen)
        _uniform_(layer.bias, bound, gen)


def make_policy(actor: torch.nn.Module, action_space: gym.spaces.Box) -> SACPolicy:
    """tanh(Gaussian) actions in [-1, 1], scaled to the env's bounds by `policy.map_action`."""
    return SACPolicy(actor=actor, action_space=action_space, deterministic_eval=True)
