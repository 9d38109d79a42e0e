"""SAC as `train` builds it: one Adam setting for actor, critics and alpha (the reference's),
relabelling of sampled batches with the reward server's current reward, and the actor
optimiser's optional hold and TD3+BC cloning term."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tianshou.algorithm import SAC
from tianshou.algorithm.modelfree.sac import AutoAlpha, SACPolicy
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.data import ReplayBuffer

from agents.cloning import DemoCloningLoss, behaviour_cloning
from agents.networks import ObsStats, make_actor, make_critic, rlkit_init_
from agents.recipes import SAC_RECIPES, TrainArgs
from sd2ail_reward.demos import DemoSet

log = logging.getLogger("sd2ail.train")


def make_sac(
    args: TrainArgs,
    obs_space: gym.spaces.Box,
    act_space: gym.spaces.Box,
    reward_fn: Callable[..., np.ndarray] | None,
    obs_stats: ObsStats | None = None,
    wait_s: Callable[[float], None] | None = None,
) -> SAC:
    """SAC with one Adam setting for actor, critics and alpha, as the reference has."""
    s, a = obs_space.shape, act_space.shape
    target_entropy = args.target_entropy
    if target_entropy is None:
        per_dim = SAC_RECIPES[args.sac_recipe].entropy_per_action_dim
        target_entropy = per_dim * float(np.prod(a))

    def opt() -> AdamOptimizerFactory:
        return AdamOptimizerFactory(lr=args.lr, betas=(args.adam_beta1, 0.999))

    actor = make_actor(s, a, args.hidden_sizes, obs_stats)
    critics = [
        make_critic(s, a, args.hidden_sizes, obs_stats, args.critic_layer_norm) for _ in range(2)
    ]
    if args.sac_init == "rlkit":
        rlkit_init_(actor, critics, torch.Generator().manual_seed(args.seed))
    kwargs: dict[str, Any] = dict(
        policy=SACPolicy(actor=actor, action_space=act_space),
        policy_optim=opt(),
        critic=critics[0],
        critic_optim=opt(),
        critic2=critics[1],
        critic2_optim=opt(),
        tau=args.tau,
        gamma=args.gamma,
        alpha=AutoAlpha(
            target_entropy=target_entropy, log_alpha=float(np.log(args.alpha)), optim=opt()
        ),
    )
    if reward_fn is None:
        return SAC(**kwargs)
    return RelabelingSAC(
        reward_fn=reward_fn, prefetch=args.relabel_prefetch, wait_s=wait_s, **kwargs
    )


class RelabelingSAC(SAC):
    """Scores each sampled batch with the current discriminator (one batched RPC), writing the
    fresh rewards into the buffer, since n-step returns read `buffer.rew`.

    The buffer holds the policy's actions in [-1, 1]; the server scores the env's actions (as
    the wrapper pushes them), so they are mapped to the env's bounds first.

    With `prefetch`, the next batch is scored while SAC updates on this one: its indices are
    drawn ahead from a copy of the buffer's sampler state, which is then put back, so Tianshou's
    own draw picks exactly those indices (the sample stream is the one without prefetching).
    Where it does not (new transitions arrived in between: the first update of a chunk), the
    prefetched rewards are dropped and the batch is scored at once. A prefetched reward comes
    from the model the server published one SAC update earlier. `wait_s` receives the seconds
    each update spent blocked on the server."""

    def __init__(
        self,
        *,
        reward_fn: Callable[..., np.ndarray],
        prefetch: bool = True,
        wait_s: Callable[[float], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.reward_fn = reward_fn
        self.wait_s = wait_s
        self._executor = ThreadPoolExecutor(1, "relabel") if prefetch else None
        self._pending: tuple[np.ndarray, Future[np.ndarray]] | None = None
        self.prefetch_hits = self.prefetch_misses = 0

    def _request(self, buffer: ReplayBuffer, indices: np.ndarray) -> Future[np.ndarray]:
        assert self._executor is not None
        batch: Any = buffer[indices]
        act = self.policy.map_action(np.asarray(batch.act))
        return self._executor.submit(
            self.reward_fn, np.asarray(batch.obs), act, np.asarray(batch.obs_next)
        )

    def _rewards(self, batch: Any, buffer: ReplayBuffer, indices: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        pending, self._pending = self._pending, None
        if pending is not None and np.array_equal(pending[0], indices):
            reward = pending[1].result()
            self.prefetch_hits += 1
        else:
            if pending is not None:
                self.prefetch_misses += 1
                pending[1].result()  # one RPC at a time; its rewards are for other rows
            act = self.policy.map_action(batch.act)
            reward = self.reward_fn(batch.obs, act, batch.obs_next)
        if self.wait_s is not None:
            self.wait_s(time.perf_counter() - start)
        return reward

    def _preprocess_batch(self, batch: Any, buffer: ReplayBuffer, indices: np.ndarray) -> Any:
        reward = self._rewards(batch, buffer, indices)
        if self._executor is not None:
            sampler = buffer._random_state.get_state()
            upcoming = buffer.sample_indices(len(indices))
            buffer._random_state.set_state(sampler)
            self._pending = (upcoming, self._request(buffer, upcoming))
        buffer.rew[indices] = reward
        batch.rew = reward
        return super()._preprocess_batch(batch, buffer, indices)

    def drain(self) -> None:
        """Waits for a prefetch in flight (before the server it calls is stopped)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            with contextlib.suppress(Exception):
                pending[1].result()


@dataclass(frozen=True)
class CloningTerm:
    """TD3+BC's cloning term as `ActorOptimizer` adds it: `weight` x |actor loss| x the
    actor's action error on `batch_size` demo pairs drawn per update."""

    actor: torch.nn.Module
    loss: DemoCloningLoss
    weight: float
    batch_size: int


class PolicyRegulariser:
    """rlkit's SAC actor-loss term, `weight` x (mean mu^2 + mean log sigma^2) of the actor's
    pre-tanh Gaussian (ALGORITHM.md 2.3), on the batch of the actor loss it is added to.

    Tianshou's SAC does not hand its optimiser the actor's output, so a forward hook keeps the
    actor's last (mu, sigma): in `SAC._update_with_batch` the actor's last forward before
    `policy_optim.step` is the one the actor loss is built from (the critics' targets are
    computed earlier, in `_preprocess_batch`)."""

    def __init__(self, actor: torch.nn.Module, weight: float) -> None:
        self.weight = weight
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None
        actor.register_forward_hook(self._keep)

    def _keep(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        (mu, sigma), _ = output
        self._last = (mu, sigma)

    def __call__(self) -> torch.Tensor:
        if self._last is None:
            raise RuntimeError("the policy regulariser needs the actor's forward first")
        mu, sigma = self._last
        self._last = None  # never reused by a later step
        return self.weight * (mu.pow(2).mean() + sigma.log().pow(2).mean())


class ActorOptimizer:
    """SAC's actor optimiser, optionally holding its first `hold` steps (critics and alpha
    still learn) and adding a behaviour-cloning term and rlkit's policy regulariser to the
    actor's loss.

    The cloning term is TD3+BC's (Fujimoto & Gu, 2021): `bc_weight * mean|Q| * mse` on a demo
    batch, so that its pull keeps in proportion to the Q-values as they grow; |actor loss|
    stands in for mean|Q| (the entropy term is small beside Q). Tianshou's SAC calls
    `policy_optim.step(actor_loss)`; its own optimiser list, which holds the state that
    checkpoints save, keeps the wrapped one."""

    def __init__(
        self,
        inner: Any,
        hold: int = 0,
        cloning: CloningTerm | None = None,
        seed: int = 0,
        regulariser: PolicyRegulariser | None = None,
    ) -> None:
        self.inner, self.hold, self.skipped, self.cloning = inner, hold, 0, cloning
        self.regulariser = regulariser
        self.gen = torch.Generator().manual_seed(seed)
        self.last_cloning_mse = float("nan")

    def step(
        self, loss: torch.Tensor, retain_graph: bool | None = None, create_graph: bool = False
    ) -> None:
        if self.skipped < self.hold:
            self.skipped += 1
            return
        if self.regulariser is not None:
            loss = loss + self.regulariser()
        if self.cloning is not None:
            term = self.cloning
            idx = torch.randint(len(term.loss.obs), (term.batch_size,), generator=self.gen)
            mse = term.loss(term.actor, idx)
            self.last_cloning_mse = float(mse.detach())
            loss = loss + term.weight * loss.detach().abs() * mse
        self.inner.step(loss, retain_graph=retain_graph, create_graph=create_graph)


def wrap_actor_optimizer(
    args: TrainArgs, algorithm: SAC, demos: DemoSet | None, act_space: gym.spaces.Box
) -> ActorOptimizer:
    """Puts an `ActorOptimizer` with the run's hold and cloning term in SAC's place."""
    cloning = None
    if args.bc_weight > 0:
        if demos is None:
            raise ValueError("--bc-weight needs --demos")
        loss = DemoCloningLoss(demos, act_space)
        cloning = CloningTerm(algorithm.policy.actor, loss, args.bc_weight, args.batch_size)
    regulariser = None
    if args.policy_reg > 0:
        regulariser = PolicyRegulariser(algorithm.policy.actor, args.policy_reg)
    optim = ActorOptimizer(
        algorithm.policy_optim, args.actor_hold_updates, cloning, args.seed, regulariser
    )
    algorithm.policy_optim = optim  # type: ignore[assignment]
    return optim


def initialise_actor_by_cloning(
    args: TrainArgs, actor: torch.nn.Module, demos: DemoSet, act_space: gym.spaces.Box
) -> None:
    for _ in behaviour_cloning(actor, demos, act_space, args.bc_init_epochs, args.seed):
        pass
    log.info("actor initialised by %d epochs of behaviour cloning", args.bc_init_epochs)
