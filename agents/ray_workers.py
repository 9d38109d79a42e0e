"""Env workers on a Ray cluster, each wrapping its env with `SD2AILRewardWrapper` against one
reward server; one learner process trains from what they collect (needs the `ray` extra).

    python agents/ray_workers.py --workers 2 --steps 5000        # local Ray, local server
    python agents/ray_workers.py --workers 2 --collect-only 4000  # env steps/s, no learning

Design: a Tianshou vector env whose workers are Ray actors (`SD2AILRayVectorEnv`). A training
loop that steps a Tianshou vector env through a `Collector` (`sd2ail-reward train`'s loop, or
Tianshou's own trainers as below) stays exactly as it is; the one line that changes is the
training venv, ``DummyVectorEnv([make_env])`` -> ``ray_vector_env(WrappedEnvFactory(...), n)``.
Each actor steps its env inside the wrapper, which scores (s, a, s') with the server and pushes
the transitions itself, so rewards and discriminator data never pass through the learner; the
learner gets (obs, act, rew, obs_next) back from the collector as from any venv, and the
collector resets finished envs, so every wrapper sees true transitions. The other design, Ray
actors running their own rollout loop into a shared buffer, would replace the project's
collection loop (and Tianshou's) with a new one, and the policy's weights would have to be
shipped to the actors; here the policy stays in the learner and only actions and observations
cross the network.

Why not `tianshou.env.RayVectorEnv` as it is: its `RayEnvWorker` calls ``env_fn()`` in the
learner's process and ships the built env to the actor, and reserves ``num_cpus=0``, so Ray
packs every actor onto the learner's node. `RayWorker` ships the small picklable factory and
builds the env (and its gRPC channel) inside the actor, reserves `num_cpus_per_worker` CPUs,
spreads actors over the nodes (``scheduling_strategy="SPREAD"``), exposes each worker's
counters and a flush, and ends its actors on `close()`. The actor side (`WrappedEnvFactory`,
`EnvActor`) lives in agents/ray_actor.py, which imports neither Tianshou nor torch.

On a multi-machine cluster (a sketch: this repository measured a local cluster only)::

    # server machine: reachable from every node, token + TLS (README, "From another machine")
    sd2ail-reward serve --demos demos/Hopper-v5.zarr --host 0.0.0.0 --port 50051 \\
        --token-file tokens --tls-cert server.pem --tls-key server.key
    # every node: the package installed (pip install -e '.[ray]'), and the write token in the
    # environment of `ray start`, which Ray workers inherit:
    SD2AIL_REWARD_TOKEN=<write token> ray start --address HEAD:6379     # (--head on the head)
    # the learner, on any node:
    python agents/ray_workers.py --ray-address auto --server 10.0.0.5:50051 \\
        --tls-ca server.pem --workers 32 --steps 1000000

Token: with the token in each node's environment (above), the factory carries none and each
worker's `RewardClient` reads ``SD2AIL_REWARD_TOKEN``; nothing secret crosses Ray. ``--token``
or ``--token-file`` instead put it into the factory, i.e. into the actors' constructor
arguments (held by Ray within the cluster). Do not use ``runtime_env={"env_vars": ...}``:
Ray records a job's runtime_env with the job (``ray job list``, the dashboard). The CA
certificate travels as PEM bytes in the factory (a path would not exist on other nodes).
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import gymnasium as gym
import numpy as np
from tianshou.env import BaseVectorEnv
from tianshou.env.worker.ray import RayEnvWorker

from agents.ray_actor import EnvActor, WrappedEnvFactory
from sd2ail_reward import RewardClient
from sd2ail_reward.flags import parse

__all__ = [
    "EnvActor",
    "RayWorker",
    "SD2AILRayVectorEnv",
    "WrappedEnvFactory",
    "collect_rate",
    "ray_vector_env",
]


class RayWorker(RayEnvWorker):
    """Tianshou env worker on a Ray actor that builds its env from `env_fn` itself (see the
    module doc for how this differs from `RayEnvWorker`, whose other methods it keeps)."""

    def __init__(
        self,
        env_fn: Callable[[], gym.Env[Any, Any]],
        *,
        num_cpus: float = 1.0,
        scheduling_strategy: str = "SPREAD",
    ) -> None:
        import ray

        options = {"num_cpus": num_cpus, "scheduling_strategy": scheduling_strategy}
        self._actor = cast(Any, ray.remote(EnvActor).options(**options).remote(env_fn))
        self.env = self._actor  # the handle RayEnvWorker's methods call
        # EnvWorker.__init__ reads the action space through get_env_attr (this actor).
        super(RayEnvWorker, self).__init__(env_fn)

    def seed(self, seed: int | None = None) -> list[int] | None:
        """Seed the driver-side action space and reset the env with `seed` (Gymnasium envs
        are seeded through reset, as Tianshou's Dummy/Subproc workers do)."""
        import ray

        self.action_space.seed(seed)
        ray.get(self._actor.reset.remote(seed=seed))
        return None if seed is None else [seed]

    @property
    def actor(self) -> Any:
        """The Ray actor handle (an `EnvActor`)."""
        return self._actor


class SD2AILRayVectorEnv(BaseVectorEnv):
    """Tianshou vector env over `RayWorker`s: a drop-in for `DummyVectorEnv(env_fns)`.

    Ray must be reachable: an initialised Ray, else ``ray.init()`` (a local cluster, or the
    one named by ``RAY_ADDRESS``). Each worker reserves `num_cpus_per_worker` CPUs.
    """

    def __init__(
        self,
        env_fns: Sequence[Callable[[], gym.Env[Any, Any]]],
        *,
        num_cpus_per_worker: float = 1.0,
        scheduling_strategy: str = "SPREAD",
        wait_num: int | None = None,
        timeout: float | None = None,
    ) -> None:
        import ray

        if not ray.is_initialized():
            ray.init()

        def worker(fn: Callable[[], gym.Env[Any, Any]]) -> RayWorker:
            return RayWorker(
                fn, num_cpus=num_cpus_per_worker, scheduling_strategy=scheduling_strategy
            )

        super().__init__(env_fns, worker, wait_num, timeout)

    def _actors(self) -> list[Any]:
        return [worker.actor for worker in self.workers]  # type: ignore[attr-defined]

    def close(self) -> None:
        """Close every env (each wrapper pushes its last transitions), then end the actors so
        that their CPUs are free at once (not when Ray collects the handles)."""
        import ray

        actors = self._actors()
        try:
            super().close()
        finally:
            for actor in actors:
                ray.kill(actor)

    def flush(self) -> None:
        """Every worker pushes its buffered transitions now."""
        import ray

        ray.get([actor.flush.remote() for actor in self._actors()])

    def worker_counters(self) -> list[dict[str, Any]]:
        """Per worker: env steps, resets, transitions pushed, pid and Ray node id."""
        import ray

        return list(ray.get([actor.counters.remote() for actor in self._actors()]))


def ray_vector_env(
    factory: Callable[[], gym.Env[Any, Any]], n_workers: int, **kwargs: Any
) -> SD2AILRayVectorEnv:
    """`n_workers` Ray env workers, each with its own env built by `factory`."""
    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    return SD2AILRayVectorEnv([factory] * n_workers, **kwargs)


def collect_rate(venv: BaseVectorEnv, n_steps: int) -> float:
    """Env steps/s of random-action collection through a Tianshou `Collector` (no network
    forward pass, no updates): the cost of the env side alone, rewards and pushes included."""
    from tianshou.algorithm.algorithm_base import RandomActionPolicy
    from tianshou.data import Collector, CollectStats, VectorReplayBuffer

    policy = RandomActionPolicy(venv.get_env_attr("action_space", 0)[0])
    buffer = VectorReplayBuffer(max(n_steps, len(venv)), len(venv))
    collector = Collector[CollectStats](policy, venv, buffer)
    collector.reset()
    start = time.perf_counter()
    stats = collector.collect(n_step=n_steps)
    return float(stats.n_collected_steps) / (time.perf_counter() - start)


# ------------------------------------------------------------------------------ example


@dataclass(frozen=True)
class Args:
    """Flags of the example, one per field."""

    workers: int = 2
    """Ray env workers."""
    ray_address: str = ""
    """Ray cluster to join ('auto'); empty: a local Ray."""
    num_cpus: int = 0
    """CPUs of a local Ray (0: workers + 1)."""
    cpus_per_worker: float = 1.0
    """CPUs each worker reserves."""
    server: str = ""
    """host:port of a reward server; empty: a local one."""
    token: str = ""
    """Write token shipped to the workers."""
    token_file: Path | None = None
    """Read the write token from this file."""
    tls_ca: Path | None = None
    """CA certificate (PEM) of a TLS server."""
    demos: str = "demos/Pendulum-v1.zarr"
    """Demo store of the local server."""
    demo_episodes: tuple[int, ...] = (6,)
    """Store indices of the expert episodes the local server learns from."""
    serve_args: str = ""
    """Extra flags for the local `serve`, e.g. '--hidden-dim 32'."""
    steps: int = 5_000
    """Env steps in total."""
    start_steps: int = 1_000
    """Random-action warm-up steps."""
    collect_per_worker: int = 4
    """Env steps per worker per collect."""
    eval_every: int = 1_000
    """Env steps per epoch (one evaluation each)."""
    eval_episodes: int = 5
    """Episodes per evaluation."""
    sync_every: int = 1_000
    """Env steps between client.sync() calls (0: never)."""
    hidden: int = 256
    """SAC hidden width."""
    push_batch: int = 256
    """Transitions per push."""
    seed: int = 0
    """Seed of the learner, the workers' envs and the local server."""
    threads: int = 1
    """Torch threads of the learner."""
    collect_only: int = 0
    """Measure N random-action env steps through the workers, then stop (0: train SAC)."""


def parse_args(argv: Sequence[str] | None = None) -> Args:
    return parse(Args, argv, description=(__doc__ or "").split("\n\n")[0])


def train_sac(args: Args, env_id: str, client: RewardClient, venv: BaseVectorEnv) -> float:
    """Tianshou SAC (ECOSYSTEM.md 1.2's, with the SD2AIL paper's lr 3e-4) on the Ray workers'
    transitions; the reward it learns from is the wrappers'. Returns the best TRUE evaluation
    return (unwrapped test env, deterministic policy)."""
    import torch
    from tianshou.algorithm import SAC
    from tianshou.algorithm.modelfree.sac import AutoAlpha, SACPolicy
    from tianshou.algorithm.optim import AdamOptimizerFactory
    from tianshou.data import Collector, CollectStats, VectorReplayBuffer
    from tianshou.env import DummyVectorEnv
    from tianshou.trainer import OffPolicyTrainerParams
    from tianshou.utils.net.common import Net
    from tianshou.utils.net.continuous import ContinuousActorProbabilistic, ContinuousCritic

    probe = gym.make(env_id)
    obs_space, act_space = probe.observation_space, probe.action_space
    probe.close()
    assert isinstance(obs_space, gym.spaces.Box) and isinstance(act_space, gym.spaces.Box)
    shape_o, shape_a, hidden = obs_space.shape, act_space.shape, [args.hidden, args.hidden]
    torch.manual_seed(args.seed)

    def critic() -> ContinuousCritic:
        net = Net(state_shape=shape_o, action_shape=shape_a, hidden_sizes=hidden, concat=True)
        return ContinuousCritic(preprocess_net=net)

    actor = ContinuousActorProbabilistic(
        preprocess_net=Net(state_shape=shape_o, hidden_sizes=hidden),
        action_shape=shape_a,
        unbounded=True,
        conditioned_sigma=True,
    )
    lr = AdamOptimizerFactory(lr=3e-4)
    algorithm: SAC = SAC(
        policy=SACPolicy(actor=actor, action_space=act_space),
        policy_optim=lr,
        critic=critic(),
        critic_optim=lr,
        critic2=critic(),
        critic2_optim=lr,
        alpha=AutoAlpha(target_entropy=-float(np.prod(shape_a)), log_alpha=0.0, optim=lr),
    )
    venv.seed(args.seed)
    test_envs = DummyVectorEnv([lambda: gym.make(env_id)])
    test_envs.seed(args.seed + 1_000_000)
    buffer = VectorReplayBuffer(max(args.steps, 1), len(venv))
    train_c = Collector[CollectStats](algorithm, venv, buffer, exploration_noise=True)
    test_c = Collector[CollectStats](algorithm, test_envs)
    train_c.reset()
    train_c.collect(n_step=args.start_steps, random=True)
    next_sync = [args.sync_every]

    def sync(epoch: int, env_step: int) -> None:  # before every training step
        if args.sync_every > 0 and env_step >= next_sync[0]:
            next_sync[0] += args.sync_every
            client.sync()

    result = algorithm.run_training(
        OffPolicyTrainerParams(
            training_collector=train_c,
            test_collector=test_c,
            max_epochs=max(1, -(-(args.steps - args.start_steps) // args.eval_every)),
            epoch_num_steps=args.eval_every,
            collection_step_num_env_steps=len(venv) * args.collect_per_worker,
            update_step_num_gradient_steps_per_sample=1.0,
            batch_size=256,
            test_step_num_episodes=args.eval_episodes,
            training_fn=sync,
            show_progress=False,
        )
    )
    test_envs.close()
    return float(result.best_reward)


def _token(args: Args) -> str | None:
    if args.token:
        return str(args.token)
    if args.token_file:
        roles = dict(line.split()[:2] for line in args.token_file.read_text().splitlines() if line)
        return roles.get("write") or roles.get("read")
    return None


def main(argv: Sequence[str] | None = None) -> int:

    import ray
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.ray_address and not args.server:
        raise SystemExit("--ray-address needs --server: an address every node can reach")
    tls_ca = args.tls_ca.read_bytes() if args.tls_ca else None
    with ExitStack() as stack:
        # Ray first: starting its processes after this process opened gRPC channels can hang.
        if not ray.is_initialized():
            if args.ray_address:
                ray.init(address=args.ray_address)
            else:
                ray.init(num_cpus=args.num_cpus or args.workers + 1, include_dashboard=False)
            stack.callback(ray.shutdown)
        if args.server:
            address, token = args.server, _token(args)
        else:
            from sd2ail_reward.spawn import spawn_server

            serve = ["--demos", args.demos, "--demo-episodes", *map(str, args.demo_episodes)]
            serve += ["--seed", str(args.seed), *shlex.split(args.serve_args)]
            server = stack.enter_context(spawn_server(serve, cli_args=["--log-level", "WARNING"]))
            address, token = server.address, server.token
        client = stack.enter_context(RewardClient(address, token=token, root_certificates=tls_ca))
        info = client.wait_ready(timeout_s=300)
        print(f"reward server {address}: {info.env_id}, algo {info.algo}", flush=True)
        factory = WrappedEnvFactory(
            info.env_id, address, token=token, push_batch=args.push_batch, tls_ca=tls_ca
        )
        venv = ray_vector_env(factory, args.workers, num_cpus_per_worker=args.cpus_per_worker)
        stack.callback(venv.close)
        start = time.perf_counter()
        if args.collect_only:
            rate = collect_rate(venv, args.collect_only)
            print(f"{args.workers} workers: {rate:.0f} env steps/s (random actions)", flush=True)
        else:
            best = train_sac(args, info.env_id, client, venv)
            print(f"best eval return {best:.1f}", flush=True)
        venv.flush()
        synced = client.sync()
        for i, counters in enumerate(venv.worker_counters()):
            print(f"worker {i}: {counters}", flush=True)
        wall = time.perf_counter() - start
        print(f"server: {synced['total_pushed']} transitions pushed, {wall:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    from agents.ray_workers import main as _main  # classes pickled by module path, not __main__

    sys.exit(_main())
