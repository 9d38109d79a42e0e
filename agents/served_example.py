"""What the example agents that are not `train` (agents/minimal_sac.py, agents/sb3_example.py)
share: their reward-server and evaluation flags, and the connection to `--server` or to the
local server they start without one."""

from __future__ import annotations

import shlex
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from sd2ail_reward.client import RewardClient, ServerInfo
from sd2ail_reward.spawn import LocalServer, spawn_server


@dataclass(frozen=True)
class ServedAgentArgs:
    """The flags every example agent has; each script's `Args` adds its own."""

    server: str = ""
    """host:port of a running reward server; empty starts a local one."""
    token: str = ""
    """Token for --server; empty: the SD2AIL_REWARD_TOKEN env variable."""
    demos: str = "demos/Pendulum-v1.zarr"
    """Demo store of the local server."""
    demo_episodes: tuple[int, ...] = (6,)
    """Store indices of the expert episodes the local server learns from."""
    num_demos: int = 0
    """Use the store's first N episodes instead (0: --demo-episodes)."""
    serve_args: str = ""
    """Extra flags for the local `serve`, e.g. '--hidden-dim 32'."""
    steps: int = 20_000
    """Env steps in total (all envs), random warm-up included."""
    seed: int = 0
    """Seed of the agent (torch, numpy, envs) and of the local server's learner."""
    learning_starts: int = 1_000
    """Random-action steps before SAC updates begin."""
    batch_size: int = 256
    """Minibatch size of each SAC update."""
    hidden: int = 256
    """Width of the 2 hidden layers of the actor and the critics."""
    sync_every: int = 1_000
    """Env steps between client.sync() calls (0: never)."""
    eval_every: int = 2_000
    """Env steps between deterministic true-return evaluations."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    threads: int = 1
    """Torch threads of the agent (the server runs its own)."""
    log_csv: str = ""
    """Append step,eval_return,... rows to this CSV file."""


def local_server(args: ServedAgentArgs) -> LocalServer:
    """`sd2ail-reward serve` on 127.0.0.1:<free port> with a fresh write token (the library's
    spawner), learning from the chosen demos; a context manager that stops it (SIGTERM). No
    readiness wait: the client's first call waits for SERVING itself."""
    flags = ["--demos", args.demos, "--seed", str(args.seed)]
    if args.num_demos:
        flags += ["--num-demos", str(args.num_demos)]
    else:
        flags += ["--demo-episodes", *map(str, args.demo_episodes)]
    flags += shlex.split(args.serve_args)
    return spawn_server(flags, cli_args=["--log-level", "WARNING"], wait_ready=False)


def connect(args: ServedAgentArgs, stack: ExitStack) -> tuple[RewardClient, ServerInfo]:
    """A client of `--server`, or of a local server started for the run (both closed with
    `stack`), once the server is SERVING."""
    if args.server:
        address, token = args.server, args.token or None
    else:
        server = stack.enter_context(local_server(args))
        address, token = server.address, server.token
    client = stack.enter_context(RewardClient(address, token=token))
    info = client.wait_ready(timeout_s=300)
    print(f"reward server {address}: {info.env_id}, algo {info.algo}", flush=True)
    return client, info


def true_return(act: Callable[[np.ndarray], Any], env_id: str, episodes: int, seed: int) -> float:
    """Mean TRUE return of a deterministic policy `act(obs) -> action` on an unwrapped env,
    episode i reset with `seed + i`."""
    env = gym.make(env_id)
    returns = []
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            done, ret = False, 0.0
            while not done:
                obs, rew, term, trunc, _ = env.step(act(obs))
                ret, done = ret + float(rew), bool(term or trunc)
            returns.append(ret)
    finally:
        env.close()
    return float(np.mean(returns))
