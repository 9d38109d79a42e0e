"""A compact SAC in plain torch that learns from the SD2AIL reward server through nothing but
`SD2AILRewardWrapper` (cleanrl style: one file, a frozen Args dataclass, a few functions).

    python agents/minimal_sac.py --steps 20000                     # starts its own local server
    python agents/minimal_sac.py --demo-episodes 6 1 --steps 20000   # learn from two demos
    SD2AIL_REWARD_TOKEN=... python agents/minimal_sac.py --server 10.0.0.5:50051 --steps 20000

The agent never sees the env's reward: the wrapper replaces it with the learned one at step time
and pushes every transition to the server, whose trainer thread runs one discriminator update
per pushed transition. `client.sync()` every `--sync-every` steps makes the discriminator keep
pace with the agent. The env is the one the server's demos come from (GetInfo's env id).
Evaluation is deterministic on an UNWRAPPED env, so it reports the env's true return.

Without `--server` the script starts `python -m sd2ail_reward.cli serve` itself on 127.0.0.1
with a free port and a freshly generated write token (in a private temporary token file), serving
only the expert episodes chosen with `--demo-episodes` (or the store's first `--num-demos`), and
stops it with SIGTERM at the end (`sd2ail_reward.spawn.LocalServer`; its log goes to a temporary
file, kept if it fails). Episode 0 of demos/Pendulum-v1.zarr starts upright and shows no
swing-up, hence the default `--demo-episodes 6` (a full swing-up from near the bottom).
"""

from __future__ import annotations

import copy
import csv
import sys
import time
from collections import deque
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agents.served_example import ServedAgentArgs, connect, true_return
from sd2ail_reward import RewardClient, SD2AILRewardWrapper
from sd2ail_reward.flags import parse

EVAL_SEED_OFFSET = 1_000_000
"""Evaluation episode i resets with seed + EVAL_SEED_OFFSET + i: the same start states at every
evaluation, none shared with training or with the demo store's reset seeds (10000, 10001, ...)."""


@dataclass(frozen=True)
class Args(ServedAgentArgs):
    """Flags of agents/minimal_sac.py, one per field (the shared ones: `ServedAgentArgs`)."""

    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak coefficient of the target critics."""
    policy_lr: float = 3e-4
    """Adam learning rate of the actor and of log(alpha)."""
    q_lr: float = 1e-3
    """Adam learning rate of the critics."""


def parse_args(argv: Sequence[str] | None = None) -> Args:
    return parse(Args, argv, description=__doc__.split("\n\n")[0])


# ------------------------------------------------------------------------------ local server


# ------------------------------------------------------------------------------ SAC


def mlp(inp: int, out: int, hidden: int) -> nn.Sequential:
    layers = [nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(hidden, out))


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy, rescaled to the env's action bounds."""

    scale: torch.Tensor
    bias: torch.Tensor

    def __init__(self, obs_dim: int, space: gym.spaces.Box, hidden: int) -> None:
        super().__init__()
        self.net = mlp(obs_dim, 2 * space.shape[0], hidden)
        low, high = torch.as_tensor(space.low), torch.as_tensor(space.high)
        self.register_buffer("scale", (high - low) / 2)
        self.register_buffer("bias", (high + low) / 2)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sampled action, its log-probability, deterministic action)."""
        mean, log_std = self.net(obs).chunk(2, dim=-1)
        dist = torch.distributions.Normal(mean, log_std.clamp(-5, 2).exp())
        u = dist.rsample()
        y = torch.tanh(u)
        logp = dist.log_prob(u) - torch.log(self.scale * (1 - y.pow(2)) + 1e-6)
        return y * self.scale + self.bias, logp.sum(-1), torch.tanh(mean) * self.scale + self.bias


class Critics(nn.Module):
    """Twin Q-networks."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int) -> None:
        super().__init__()
        self.q1, self.q2 = mlp(obs_dim + act_dim, 1, hidden), mlp(obs_dim + act_dim, 1, hidden)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs, act], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


class SAC:
    def __init__(self, obs_dim: int, space: gym.spaces.Box, args: Args) -> None:
        act_dim = space.shape[0]
        self.args = args
        self.actor = Actor(obs_dim, space, args.hidden)
        self.critics = Critics(obs_dim, act_dim, args.hidden)
        self.targets = copy.deepcopy(self.critics).requires_grad_(False)
        self.log_alpha = torch.zeros(1, requires_grad=True)
        self.target_entropy = -float(act_dim)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=args.policy_lr)
        self.q_opt = torch.optim.Adam(self.critics.parameters(), lr=args.q_lr)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=args.policy_lr)

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        sampled, _, mean = self.actor(torch.as_tensor(obs, dtype=torch.float32)[None])
        return (mean if deterministic else sampled)[0].numpy()

    def update(self, batch: dict[str, torch.Tensor]) -> None:
        obs, act, rew, next_obs = batch["obs"], batch["act"], batch["rew"], batch["next_obs"]
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            next_act, next_logp, _ = self.actor(next_obs)
            next_q = torch.min(*self.targets(next_obs, next_act)) - alpha * next_logp
            target = rew + self.args.gamma * (1.0 - batch["term"]) * next_q
        q1, q2 = self.critics(obs, act)
        q_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()

        new_act, logp, _ = self.actor(obs)
        actor_loss = (alpha * logp - torch.min(*self.critics(obs, new_act))).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()

        alpha_loss = -(self.log_alpha * (logp.detach() + self.target_entropy)).mean()
        self.alpha_opt.zero_grad()
        alpha_loss.backward()
        self.alpha_opt.step()

        with torch.no_grad():
            for p, tp in zip(self.critics.parameters(), self.targets.parameters(), strict=True):
                tp.lerp_(p, self.args.tau)


# ------------------------------------------------------------------------------ training


def train(args: Args, env_id: str, env: SD2AILRewardWrapper, client: RewardClient) -> float:
    """The SAC loop on the wrapper's reward; returns the best evaluation return."""
    assert isinstance(env.action_space, gym.spaces.Box)
    agent = SAC(env.obs_dim, env.action_space, args)
    n, obs_dim, act_dim = args.steps, env.obs_dim, env.act_dim
    dims = {"obs": (obs_dim,), "act": (act_dim,), "rew": (), "next_obs": (obs_dim,), "term": ()}
    buf = {k: np.zeros((n, *d), np.float32) for k, d in dims.items()}
    recent: deque[tuple[float, float]] = deque(maxlen=2_000)  # (learned, env) reward pairs
    rng = np.random.default_rng(args.seed)
    env.action_space.seed(args.seed)
    obs, _ = env.reset(seed=args.seed)
    best, start = -np.inf, time.monotonic()
    for step in range(1, n + 1):
        act = env.action_space.sample() if step <= args.learning_starts else agent.act(obs)
        next_obs, rew, term, trunc, info = env.step(act)
        for key, value in zip(buf, (obs, act, rew, next_obs, term), strict=True):
            buf[key][step - 1] = value
        recent.append((float(rew), info["env_reward"]))
        obs = env.reset()[0] if term or trunc else next_obs

        if step > args.learning_starts:
            idx = rng.integers(0, step, size=args.batch_size)
            agent.update({k: torch.as_tensor(v[idx]) for k, v in buf.items()})
        if args.sync_every and step % args.sync_every == 0:
            client.sync()
        if step % args.eval_every == 0 or step == n:
            ret = true_return(
                lambda obs: agent.act(obs, deterministic=True),
                env_id,
                args.eval_episodes,
                args.seed + EVAL_SEED_OFFSET,
            )
            best = max(best, ret)
            learned, true = np.array(recent).T
            corr = float(np.corrcoef(learned, true)[0, 1]) if learned.std() > 0 else float("nan")
            stats = client.stats()["learner"]
            row = {
                "step": step,
                "eval_return": round(ret, 2),
                "best_return": round(float(best), 2),
                "reward_env_corr": round(corr, 3),
                "d_expert": round(stats.get("d_reward/expert", float("nan")), 3),
                "d_agent": round(stats.get("d_reward/agent", float("nan")), 3),
                "disc_updates": int(stats.get("updates", 0)),
                "wall_s": round(time.monotonic() - start, 1),
            }
            print("  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
            if args.log_csv:
                new = not Path(args.log_csv).exists()
                with open(args.log_csv, "a", newline="") as fh:
                    writer = csv.DictWriter(fh, fieldnames=list(row))
                    if new:
                        writer.writeheader()
                    writer.writerow(row)
    return float(best)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with ExitStack() as stack:
        client, info = connect(args, stack)
        # The only change an agent needs: wrap the training env. Closing it flushes the pushes.
        env = SD2AILRewardWrapper(gym.make(info.env_id), reward=client, push=True)
        stack.callback(env.close)
        best = train(args, info.env_id, env, client)
    print(f"best eval return {best:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
