"""SAC that never sees the env's reward: the main job behind `sd2ail-reward train`.

Tianshou 2.0.1 SAC trained ONLY on the learned SD2AIL reward, served by a reward server:

    sd2ail-reward train --env Hopper-v5 --demos demos/Hopper-v5.zarr --num-demos 1 \\
        --algo sd2ail --steps 250000 --seed 0

- With no `--server`, a local reward server is started (subprocess, 127.0.0.1, a free port, a
  generated write token, checkpoints in RUN_DIR/server) and stopped at the end.
- The training env is wrapped with `SD2AILRewardWrapper`: it pushes every transition to the
  server, whose trainer thread runs one discriminator update per transition after the warm-up
  (the local server gets `--min-agent-size <start steps>`, so the random warm-up transitions
  earn no updates, as in the reference). Each chunk of `--chunk` env steps is followed by
  `--chunk` SAC updates, which run while the server's discriminator trains on that chunk (two
  processes, two cores), then `Sync`: the reference's 1 discriminator + 1 SAC update per env
  step, interleaved. `--no-overlap` syncs before the SAC updates instead (serial, slower).
- Rewards are relabelled when a batch is sampled (`RelabelingSAC`), with the current
  discriminator, as the reference computes -log(1 - D) at SAC update time; `--no-relabel` uses
  the wrapper's step-time reward instead.
- Evaluation envs are NOT wrapped: every `--eval-every` steps, `--eval-episodes` deterministic
  episodes report the true return. `--algo bc` trains the same actor by regression on the demos.

Run directory: config.json, metrics.csv, TensorBoard events (tb/), learning_curve.png,
checkpoints/ (SAC + replay buffer), server/ (the reward server's checkpoints), token.
`--resume RUN_DIR` continues an interrupted run with the same step count and replay buffer.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, cast

import grpc
import gymnasium as gym
import numpy as np
import torch
from tianshou.algorithm import SAC
from tianshou.algorithm.modelfree.sac import AutoAlpha, SACPolicy, SACTrainingStats
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.data import Collector, CollectStats, ReplayBuffer
from tianshou.env import DummyVectorEnv
from tianshou.utils.torch_utils import policy_within_training_step

from agents.critic_check import critic_value_check
from agents.checkpoints import TrainState, restore_sac_checkpoint, save_sac_checkpoint
from agents.expert import (
    ObsStats,
    StopRequest,
    append_metrics,
    evaluate,
    make_actor,
    make_critic,
    truncate_metrics,
    write_json,
)
from sd2ail_reward.checkpoint import Checkpoint, CheckpointError, CheckpointStore
from sd2ail_reward.client import RewardClient, RewardServiceError
from sd2ail_reward.demos import DemoSet, read_demos
from sd2ail_reward.metrics import pearson
from sd2ail_reward.wrapper import SD2AILRewardWrapper

log = logging.getLogger("sd2ail.train")
PORT_PREFIX = "SD2AIL_SERVER_PORT="
ALGOS = ("sd2ail", "diffail", "pedr_only", "pseudo_only", "gail", "bc")
REWARD_SOURCES = ("learned", "frozen", "env")
"""learned: the reward server's, trained on the pushed transitions (imitation); frozen: the
same server's discriminator never trained (a control); env: the env's own reward, no server
(experts, and the true-reward control: the ceiling SAC reaches with a recipe)."""
# BC has no env steps: its rows count epochs, and it has no server to ask for diagnostics
BC_METRICS = ("env_step", "eval_return_mean", "eval_return_std", "eval_x_travelled", "wall_time")
METRICS = (
    "env_step",
    "eval_return_mean",
    "eval_return_std",
    "eval_x_travelled",
    "wall_time",
    "steps_per_s",
    "reward_env_corr",
    "d_expert",
    "d_agent",
    "pseudo_threshold",
    "pseudo_acceptance",
    "pseudo_frechet",
    "disc_updates",
    "critic_q",
    "learned_return",
)


@dataclass(frozen=True)
class SacRecipe:
    """A coherent set of SAC settings; each flag given explicitly overrides its field."""

    lr: float
    adam_beta1: float
    alpha: float
    entropy_per_action_dim: float
    """Target entropy of the alpha tuning = this x |A| (unless --target-entropy is given)."""
    fixed_length: bool
    normalize_obs_envs: tuple[str, ...]
    """Env families whose SAC sees observations normalised with the demos' mean and std."""


SAC_RECIPES: dict[str, SacRecipe] = {
    # the SD2AIL reference's (ALGORITHM.md sec. 2.3): fixed-length MuJoCo training episodes
    "reference": SacRecipe(
        lr=3e-4,
        adam_beta1=0.25,
        alpha=0.2,
        entropy_per_action_dim=-0.5,
        fixed_length=True,
        normalize_obs_envs=("Hopper", "Walker2d"),  # scale_env_with_demo_stats (ALGORITHM 2.4)
    ),
    # the settings that trained our own experts (agents/expert.py), episodes that terminate
    "expert": SacRecipe(
        lr=1e-3,
        adam_beta1=0.9,
        alpha=1.0,
        entropy_per_action_dim=-1.0,
        fixed_length=False,
        normalize_obs_envs=(),
    ),
}
DEFAULT_RECIPE = "reference"


@dataclass(frozen=True)
class TrainArgs:
    """Flags of `sd2ail-reward train` (SAC recipes: `SAC_RECIPES`)."""

    env: str = "Hopper-v5"
    demos: str = "demos/Hopper-v5.zarr"
    num_demos: int = 1
    demo_episodes: tuple[int, ...] | None = None
    algo: str = "sd2ail"
    steps: int = 250_000
    seed: int = 0
    server: str | None = None
    token: str | None = None
    run_dir: str = ""
    resume: bool = False
    relabel: bool = True
    overlap: bool = True
    reward: str = "learned"
    """What SAC is trained on: `REWARD_SOURCES`."""
    eval_every: int = 10_000
    eval_episodes: int = 10
    target_return: float | None = None
    start_steps: int = 5_000
    chunk: int = 1_000
    batch_size: int = 256
    buffer_size: int = 1_000_000
    hidden_sizes: tuple[int, ...] = (256, 256)
    sac_recipe: str = DEFAULT_RECIPE
    lr: float = SAC_RECIPES[DEFAULT_RECIPE].lr
    adam_beta1: float = SAC_RECIPES[DEFAULT_RECIPE].adam_beta1
    gamma: float = 0.99
    tau: float = 0.005
    alpha: float = SAC_RECIPES[DEFAULT_RECIPE].alpha
    target_entropy: float | None = None
    fixed_length: bool = SAC_RECIPES[DEFAULT_RECIPE].fixed_length
    normalize_obs: bool | None = None
    """None: the recipe's choice for this env (`policy_sees_normalized_obs`)."""
    bc_epochs: int = 200
    bc_init_epochs: int = 0
    actor_hold_updates: int = 0
    bc_weight: float = 0.0
    critic_layer_norm: bool = False
    server_args: tuple[str, ...] = ()
    progress: bool = True

    @property
    def run_path(self) -> Path:
        if self.run_dir:
            return Path(self.run_dir)
        if self.reward == "env":
            return Path(f"runs/sac-envreward-{self.sac_recipe}-{self.env}-seed{self.seed}")
        return Path(f"runs/{self.algo}-{self.env}-seed{self.seed}")


def add_train_args(parser: argparse.ArgumentParser) -> None:
    """The `train` flags; every one documented in --help."""
    d = TrainArgs()
    a = parser.add_argument
    a("--env", default=d.env, help="Gymnasium env id (default: %(default)s)")
    a("--demos", default=d.demos, help="zarr demo store of that env (default: %(default)s)")
    a("--num-demos", type=int, default=d.num_demos, help="expert episodes (the first ones)")
    a("--demo-episodes", type=int, nargs="+", help="explicit store indices of the episodes")
    a("--algo", choices=ALGOS, default=d.algo, help="reward learner, or bc (no server)")
    a("--steps", type=int, default=d.steps, help="env steps, warm-up included")
    a("--seed", type=int, default=d.seed, help="seed of SAC, envs and the reward learner")
    a("--server", help="host:port of a running reward server (default: start a local one)")
    a("--token", help="token for --server (default: $SD2AIL_REWARD_TOKEN)")
    a("--run-dir", default="", help="output directory (default: runs/<algo>-<env>-seed<seed>)")
    a("--resume", action="store_true", help="continue the run in --run-dir")
    a(
        "--no-relabel",
        dest="relabel",
        action="store_false",
        help="use the wrapper's step-time reward instead of relabelling sampled batches",
    )
    a(
        "--no-overlap",
        dest="overlap",
        action="store_false",
        help="wait for the discriminator to finish a chunk before its SAC updates (default: "
        "SAC updates run while it trains, then Sync)",
    )
    a(
        "--reward",
        choices=REWARD_SOURCES,
        default=d.reward,
        help="what SAC learns from: 'learned' (the reward server's, imitation), 'frozen' (the "
        "server's discriminator never trained: a control) or 'env' (the env's own reward, no "
        "server: experts and the true-reward control) (default: %(default)s)",
    )
    a("--eval-every", type=int, default=d.eval_every, help="env steps between evaluations")
    a("--eval-episodes", type=int, default=d.eval_episodes, help="episodes per evaluation")
    a(
        "--target-return",
        type=float,
        help="stop once an evaluation's mean true return reaches this (default: run all steps)",
    )
    a("--start-steps", type=int, default=d.start_steps, help="uniform random warm-up steps")
    a(
        "--chunk",
        type=int,
        default=d.chunk,
        help="env steps between blocks of updates (1 disc + 1 SAC update per env step)",
    )
    a("--batch-size", type=int, default=d.batch_size, help="SAC minibatch")
    a("--buffer-size", type=int, default=d.buffer_size, help="replay buffer capacity")
    a("--hidden-sizes", type=int, nargs="+", default=list(d.hidden_sizes), help="SAC MLP sizes")
    a(
        "--sac-recipe",
        choices=sorted(SAC_RECIPES),
        default=d.sac_recipe,
        help="SAC settings: 'reference' (the SD2AIL code's: lr 3e-4, Adam beta1 0.25, alpha "
        "0.2, target entropy -|A|/2, fixed-length MuJoCo training episodes) or 'expert' (our "
        "experts': lr 1e-3, beta1 0.9, alpha 1.0, target -|A|, terminating episodes); the "
        "flags below override single fields (default: %(default)s)",
    )
    a("--lr", type=float, help="Adam lr of actor, critics and alpha (default: the recipe's)")
    a("--adam-beta1", type=float, help="Adam beta1 (default: the recipe's)")
    a("--gamma", type=float, default=d.gamma, help="discount")
    a("--tau", type=float, default=d.tau, help="target network Polyak coefficient")
    a("--alpha", type=float, help="initial entropy coefficient, auto-tuned (default: recipe's)")
    a(
        "--target-entropy",
        type=float,
        default=d.target_entropy,
        help="entropy target of the alpha tuning (default: the recipe's multiple of -|A|)",
    )
    a(
        "--fixed-length",
        action=argparse.BooleanOptionalAction,
        help="MuJoCo training episodes run the full horizon (terminate_when_unhealthy=False, "
        "the reference's no_terminal) or end when the robot falls; evaluation episodes always "
        "end (default: the recipe's)",
    )
    a(
        "--normalize-obs",
        action=argparse.BooleanOptionalAction,
        help="SAC's networks see observations normalised with the demos' mean and std, as the "
        "reference's ScaledEnv (default: the recipe's: reference does for Hopper and Walker2d)",
    )
    a("--bc-epochs", type=int, default=d.bc_epochs, help="epochs of --algo bc")
    a(
        "--bc-init-epochs",
        type=int,
        default=d.bc_init_epochs,
        help="start SAC's actor from behaviour cloning on the demos for this many epochs "
        "(not in the paper; default: %(default)s, off)",
    )
    a(
        "--actor-hold-updates",
        type=int,
        default=d.actor_hold_updates,
        help="skip the actor's first N optimiser steps while the critics learn, so that a "
        "--bc-init-epochs actor is not pushed by an untrained critic (default: %(default)s)",
    )
    a(
        "--bc-weight",
        type=float,
        default=d.bc_weight,
        help="add TD3+BC's behaviour-cloning term to SAC's actor loss: this weight x mean|Q| x "
        "the MSE to demo actions (0.4 is TD3+BC's alpha 2.5; not in the paper; default: "
        "%(default)s, off)",
    )
    a(
        "--critic-layer-norm",
        action="store_true",
        help="LayerNorm before each hidden activation of both critics, which bounds Q on "
        "states far from the data, such as a fallen Hopper (RLPD, Ball et al. 2023; not in "
        "the paper; default: off)",
    )
    a(
        "--server-arg",
        dest="server_args",
        action="append",
        default=[],
        help="extra flag for the local server, e.g. --server-arg=--hidden-dim=64 (repeatable)",
    )
    a("--no-progress", dest="progress", action="store_false", help="log lines, no progress bar")


def args_from_namespace(ns: argparse.Namespace) -> TrainArgs:
    values = {f.name: getattr(ns, f.name) for f in fields(TrainArgs) if hasattr(ns, f.name)}
    recipe = asdict(SAC_RECIPES[values.get("sac_recipe") or DEFAULT_RECIPE])
    for key in ("lr", "adam_beta1", "alpha", "fixed_length"):
        if values.get(key) is None:
            values[key] = recipe[key]
    for key in ("hidden_sizes", "demo_episodes", "server_args"):
        if values.get(key) is not None:
            values[key] = tuple(values[key])
    return TrainArgs(**values)


# ------------------------------------------------------------------------------ reward server


class LocalServer:
    """A reward server subprocess on 127.0.0.1 with a generated write token."""

    def __init__(self, args: TrainArgs, run_dir: Path, resume_from: str = "") -> None:
        token_file = run_dir / "token"
        if not token_file.exists():
            token_file.write_text(f"write {secrets.token_hex(24)}\n")
            token_file.chmod(0o600)
        self.token = token_file.read_text().split()[1]
        cmd = [
            sys.executable,
            "-m",
            "sd2ail_reward.cli",
            "serve",
            "--demos",
            args.demos,
            "--algo",
            args.algo,
            "--seed",
            str(args.seed),
            "--port",
            "0",
            "--token-file",
            str(token_file),
            "--checkpoint-dir",
            str(run_dir / "server"),
            # checkpoints only when train asks (with its own) and at shutdown, so that the
            # generation a resume pairs with is never pruned by periodic ones
            "--checkpoint-every",
            "0",
            *(["--resume-from", resume_from] if resume_from else ["--resume"]),
            "--min-agent-size",
            str(max(args.start_steps, 256)),
        ]
        if args.demo_episodes:
            cmd += ["--demo-episodes", *map(str, args.demo_episodes)]
        else:
            cmd += ["--num-demos", str(args.num_demos)]
        if args.reward == "frozen":
            cmd += ["--no-train"]
        cmd += list(args.server_args)
        log.info("starting reward server: %s", " ".join(cmd))
        self.log_file = (run_dir / "server.log").open("a")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log_file, text=True)
        assert self.proc.stdout is not None
        port = None
        for line in self.proc.stdout:
            if line.startswith(PORT_PREFIX):
                port = int(line.strip()[len(PORT_PREFIX) :])
                break
        if port is None:
            raise SystemExit(f"reward server exited (code {self.proc.wait()}); see server.log")
        self.address = f"127.0.0.1:{port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log_file.close()


class RelabelingSAC(SAC):
    """Scores each sampled batch with the current discriminator (one batched RPC), writing the
    fresh rewards into the buffer, since n-step returns read `buffer.rew`.

    The buffer holds the policy's actions in [-1, 1]; the server scores the env's actions (as
    the wrapper pushes them), so they are mapped to the env's bounds first."""

    def __init__(self, *, reward_fn: Callable[..., np.ndarray], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reward_fn = reward_fn

    def _preprocess_batch(self, batch: Any, buffer: ReplayBuffer, indices: np.ndarray) -> Any:
        reward = self.reward_fn(batch.obs, self.policy.map_action(batch.act), batch.obs_next)
        buffer.rew[indices] = reward
        batch.rew = reward
        return super()._preprocess_batch(batch, buffer, indices)


def wait_for_discriminator(client: RewardClient, round_s: float = 300.0) -> dict[str, int]:
    """`Sync` until the server has trained on everything pushed. On a slow machine catching up
    can take longer than one deadline (e.g. the warm-up's thousands of transitions at a few
    updates/s), so keep waiting while the model version advances; fail if it stalls."""
    last_version = -1
    while True:
        try:
            return client.sync(timeout_s=round_s)
        except RewardServiceError as err:
            if err.code != grpc.StatusCode.DEADLINE_EXCEEDED:
                raise
            version = client.info().model_version
            if version == last_version:
                raise RuntimeError(
                    f"the reward server made no training progress in {round_s:.0f} s "
                    f"(model version {version}): {err.details}"
                ) from err
            log.info("discriminator catching up (model version %d): %s", version, err.details)
            last_version = version


def policy_sees_normalized_obs(args: TrainArgs) -> bool:
    if args.normalize_obs is not None:
        return args.normalize_obs
    family = args.env.split("-")[0]
    return family in SAC_RECIPES[args.sac_recipe].normalize_obs_envs


def policy_obs_stats(args: TrainArgs, demos: DemoSet) -> ObsStats | None:
    """The demos' obs mean and std when SAC normalises observations (else None)."""
    if not policy_sees_normalized_obs(args):
        return None
    obs = np.asarray(demos.obs, dtype=np.float64)
    return obs.mean(axis=0).astype(np.float32), obs.std(axis=0).astype(np.float32)


def box_spaces(env_id: str) -> tuple[gym.spaces.Box, gym.spaces.Box]:
    """The observation and action spaces of a continuous-control env."""
    probe = gym.make(env_id)
    obs_space, act_space = probe.observation_space, probe.action_space
    probe.close()
    assert isinstance(obs_space, gym.spaces.Box) and isinstance(act_space, gym.spaces.Box)
    return obs_space, act_space


def make_sac(
    args: TrainArgs,
    obs_space: gym.spaces.Box,
    act_space: gym.spaces.Box,
    reward_fn: Callable[..., np.ndarray] | None,
    obs_stats: ObsStats | None = None,
) -> SAC:
    """SAC with one Adam setting for actor, critics and alpha, as the reference has."""
    s, a = obs_space.shape, act_space.shape
    target_entropy = args.target_entropy
    if target_entropy is None:
        per_dim = SAC_RECIPES[args.sac_recipe].entropy_per_action_dim
        target_entropy = per_dim * float(np.prod(a))

    def opt() -> AdamOptimizerFactory:
        return AdamOptimizerFactory(lr=args.lr, betas=(args.adam_beta1, 0.999))

    kwargs: dict[str, Any] = dict(
        policy=SACPolicy(
            actor=make_actor(s, a, args.hidden_sizes, obs_stats), action_space=act_space
        ),
        policy_optim=opt(),
        critic=make_critic(s, a, args.hidden_sizes, obs_stats, args.critic_layer_norm),
        critic_optim=opt(),
        critic2=make_critic(s, a, args.hidden_sizes, obs_stats, args.critic_layer_norm),
        critic2_optim=opt(),
        tau=args.tau,
        gamma=args.gamma,
        alpha=AutoAlpha(
            target_entropy=target_entropy, log_alpha=float(np.log(args.alpha)), optim=opt()
        ),
    )
    if reward_fn is None:
        return SAC(**kwargs)
    return RelabelingSAC(reward_fn=reward_fn, **kwargs)


def training_env_kwargs(args: TrainArgs) -> dict[str, Any]:
    """Fixed-length training episodes for MuJoCo envs that can fall (the reference ignores
    `done` and resets at the horizon); evaluation always respects termination."""
    if not args.fixed_length:
        return {}
    entry = str(gym.spec(args.env).entry_point)
    if "mujoco" in entry and any(n in args.env for n in ("Hopper", "Walker2d", "Ant")):
        return {"terminate_when_unhealthy": False}
    return {}


class DistanceTracker(gym.Wrapper[Any, Any, Any, Any]):
    """Records how far each finished episode moved along x, from the `x_position` that MuJoCo
    locomotion envs report in info (NaN for envs that do not). The true return alone cannot
    tell a Hopper that hops from one that stands still for 1000 steps collecting the healthy
    bonus (~1000): a positive learned reward on episodes that end on a fall breeds the latter.
    """

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        self.start_x = self.last_x = float("nan")
        self.finished: list[float] = []

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(**kwargs)
        self.start_x = self.last_x = float(info.get("x_position", float("nan")))
        return obs, info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.last_x = float(info.get("x_position", float("nan")))
        if terminated or truncated:
            self.finished.append(self.last_x - self.start_x)
        return obs, reward, terminated, truncated, info


def make_eval_envs(args: TrainArgs) -> tuple[DummyVectorEnv, list[DistanceTracker]]:
    """Unwrapped (true-reward) evaluation envs, with a handle on each one's distance tracker
    (DummyVectorEnv keeps the very env objects its factories return)."""
    trackers = [DistanceTracker(gym.make(args.env)) for _ in range(args.eval_episodes)]

    def factory(env: gym.Env[Any, Any]) -> Callable[[], gym.Env[Any, Any]]:
        return lambda: env

    return DummyVectorEnv([factory(t) for t in trackers]), trackers


def mean_travelled(trackers: Sequence[DistanceTracker]) -> float:
    """Mean x distance of the episodes finished since the last call (NaN if none has x)."""
    distances = [d for t in trackers for d in t.finished]
    for tracker in trackers:
        tracker.finished.clear()
    return float(np.mean(distances)) if distances else float("nan")


def expert_return(demos: DemoSet) -> float:
    """Mean return of the expert episodes in use (the reference line of the plots)."""
    return float(np.mean(demos.episode_returns))


# ------------------------------------------------------------------------------ diagnostics


def reward_correlation(
    buffer: ReplayBuffer, client: RewardClient, policy: SACPolicy, n: int = 5000
) -> float:
    """Pearson correlation of the current learned reward and the env's reward over the last
    `n` training transitions (the paper reports 90.1% on Hopper)."""
    size = len(buffer)
    if size < 2:
        return float("nan")
    idx = (int(buffer.last_index[0]) - np.arange(min(n, size))) % buffer.maxsize
    batch: Any = buffer[idx]
    env_act = policy.map_action(np.asarray(batch.act))  # the buffer holds [-1, 1] actions
    learned = client.reward(np.asarray(batch.obs), env_act, np.asarray(batch.obs_next))
    return pearson(learned, np.asarray(batch.info["env_reward"], np.float64))


def write_learning_curve(run_dir: Path, expert: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    if not rows:
        return
    steps = [int(r["env_step"]) for r in rows]
    mean = np.array([float(r["eval_return_mean"]) for r in rows])
    std = np.array([float(r["eval_return_std"]) for r in rows])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, mean, label="agent (true return)")
    ax.fill_between(steps, mean - std, mean + std, alpha=0.2)
    ax.axhline(expert, color="k", ls="--", label=f"expert demos ({expert:.0f})")
    ax.set_xlabel("env steps")
    ax.set_ylabel("evaluation return")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "learning_curve.png", dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------ training


class Progress:
    """A progress bar refreshed at most twice a second, or log lines with --no-progress."""

    def __init__(self, args: TrainArgs, start: int) -> None:
        self.bar: Any = None
        if args.progress:
            from tqdm import tqdm  # type: ignore[import-untyped]

            self.bar = tqdm(total=args.steps, initial=start, mininterval=0.5, unit="step")
        self.last_log = time.time()

    def update(self, step: int, n: int, post: dict[str, str]) -> None:
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix(post, refresh=False)
        elif time.time() - self.last_log > 30:
            self.last_log = time.time()
            log.info("step %d %s", step, " ".join(f"{k} {v}" for k, v in post.items()))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class RunDirInUse(FileExistsError):
    """A new run pointed at a directory that already holds one."""


def train(args: TrainArgs) -> dict[str, float]:
    run_dir = args.run_path
    if not args.resume and (run_dir / "metrics.csv").exists():
        # a second run would append its curve to the first one's and overwrite its checkpoints
        raise RunDirInUse(
            f"{run_dir} already holds a run; continue it with --resume --run-dir {run_dir} "
            "(--steps to extend it), or choose another --run-dir"
        )
    if args.resume:
        args = resumed_args(args)
    # config.json records what ran: the recipe's choice for this env, not "auto"
    args = replace(args, normalize_obs=policy_sees_normalized_obs(args))
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", asdict(args))
    torch.manual_seed(args.seed)
    demos = read_demos(
        args.demos,
        num_episodes=args.num_demos,
        episodes=args.demo_episodes,
        expected_env_id=args.env,
    )
    expert = expert_return(demos)
    if args.algo == "bc" and args.reward != "env":
        return train_bc(args, demos, expert)
    checkpoint = latest_sac_checkpoint(run_dir) if args.resume else None
    if args.reward == "env":
        return train_sac(args, run_dir, None, expert, demos, checkpoint)

    paired = checkpoint.meta.get("server_generation", "") if checkpoint is not None else ""
    server = None if args.server else LocalServer(args, run_dir, str(paired))
    address = args.server or (server.address if server else "")
    token = args.token if args.server else (server.token if server else None)
    client = RewardClient(address, token=token, timeout_s=60.0)
    try:
        client.wait_ready(timeout_s=300.0)
        return train_sac(args, run_dir, client, expert, demos, checkpoint)
    finally:
        client.close()
        if server is not None:
            server.stop()


def resumed_args(args: TrainArgs) -> TrainArgs:
    """The stored config of the run in --run-dir, with the flags a resume may change."""
    saved = json.loads((args.run_path / "config.json").read_text())
    saved.update(steps=args.steps, resume=True, progress=args.progress, run_dir=args.run_dir)
    if saved.pop("frozen_discriminator", False):  # runs from before --reward existed
        saved["reward"] = "frozen"
    for key in ("hidden_sizes", "demo_episodes", "server_args"):
        if saved.get(key) is not None:
            saved[key] = tuple(saved[key])
    return TrainArgs(**saved)


def latest_sac_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The newest SAC checkpoint that verifies, or None for a run that never saved one. Its
    meta names the server checkpoint saved with it, which a resumed server must load: its own
    newest one could put the discriminator ahead of the policy and replay buffer."""
    try:
        return sac_checkpoint_store(run_dir).load_latest()
    except CheckpointError as err:
        log.info("no SAC checkpoint to resume from (%s): starting from step 0", err)
        return None


def training_diagnostics(
    algorithm: SAC, buffer: ReplayBuffer, client: RewardClient | None
) -> dict[str, float]:
    """What the learned reward and the critic say about recent training: the reward's
    correlation with the env's, and the critic's Q beside the discounted learned return the
    last finished training episode actually earned (`agents/critic_check.py`). On the env's
    reward (no client) the critic is judged against the env's return."""
    if client is None:
        critic_q, env_return = critic_value_check(
            (algorithm.critic, algorithm.critic2), buffer, None, algorithm.gamma
        )
        return {"reward_env_corr": float("nan"), "critic_q": critic_q, "learned_return": env_return}

    def env_space_reward(obs: Any, act: Any, obs_next: Any) -> np.ndarray:
        return client.reward(obs, algorithm.policy.map_action(act), obs_next)

    critic_q, learned_return = critic_value_check(
        (algorithm.critic, algorithm.critic2), buffer, env_space_reward, algorithm.gamma
    )
    return {
        "reward_env_corr": reward_correlation(buffer, client, algorithm.policy),
        "critic_q": critic_q,
        "learned_return": learned_return,
    }


def record_evaluation(
    run_dir: Path,
    writer: Any,
    state: TrainState,
    evaluation: tuple[np.ndarray, float],
    learner_stats: dict[str, float],
    sac_stats: SACTrainingStats | None,
    diagnostics: dict[str, float],
    elapsed: float,
    cloning_mse: float = float("nan"),
) -> None:
    """One metrics.csv row and its TensorBoard scalars, plus SAC's own state (entropy weight
    and losses), which tells a stalled policy apart from a stalled discriminator.
    `evaluation` is the episodes' true returns and their mean x distance travelled;
    `diagnostics` is `training_diagnostics`'s; `cloning_mse` is the actor's error on the demo
    actions under `--bc-weight` (nan without)."""
    returns, x_travelled = evaluation
    row = {
        "env_step": state.env_step,
        "eval_return_mean": float(returns.mean()),
        "eval_return_std": float(returns.std()),
        "eval_x_travelled": x_travelled,
        "wall_time": round(elapsed, 1),
        "steps_per_s": round(state.env_step / max(elapsed, 1e-9), 2),
        "reward_env_corr": diagnostics["reward_env_corr"],
        "d_expert": learner_stats.get("d_reward/expert", float("nan")),
        "d_agent": learner_stats.get("d_reward/agent", float("nan")),
        "pseudo_threshold": learner_stats.get("pseudo/threshold", float("nan")),
        "pseudo_acceptance": learner_stats.get("pseudo/acceptance_total", float("nan")),
        "pseudo_frechet": learner_stats.get("pseudo/frechet_to_expert", float("nan")),
        "disc_updates": learner_stats.get("updates", float("nan")),
        "critic_q": diagnostics["critic_q"],
        "learned_return": diagnostics["learned_return"],
    }
    append_metrics(run_dir / "metrics.csv", row, METRICS)
    for key, value in row.items():
        if key != "env_step":
            writer.add_scalar(f"train/{key}", value, state.env_step)
    if sac_stats is not None:
        for key in ("alpha", "actor_loss", "critic1_loss"):
            value = getattr(sac_stats, key)
            if value is not None:
                writer.add_scalar(f"sac/{key}", float(value), state.env_step)
    if not np.isnan(cloning_mse):
        writer.add_scalar("sac/cloning_mse", cloning_mse, state.env_step)


def train_sac(
    args: TrainArgs,
    run_dir: Path,
    client: RewardClient | None,
    expert: float,
    demos: DemoSet,
    checkpoint: Checkpoint | None = None,
) -> dict[str, float]:
    """The one SAC loop: `client` None trains on the env's own reward (`--reward env`), else
    on the reward server's. Training steps are sampled from the stochastic policy (collection
    inside `policy_within_training_step`, outside of which Tianshou's SAC acts with its mean);
    evaluation is deterministic."""
    from torch.utils.tensorboard import SummaryWriter

    obs_space, act_space = box_spaces(args.env)
    env_kwargs = training_env_kwargs(args)
    push = args.reward == "learned"

    def make_train_env() -> gym.Env[Any, Any]:
        env = gym.make(args.env, **env_kwargs)
        if client is None:
            return env
        # relabelling scores every sampled batch, so a step-time reward would be wasted work
        return SD2AILRewardWrapper(
            env, reward=client, push=push, push_batch=args.chunk, score_steps=not args.relabel
        )

    train_envs = DummyVectorEnv([make_train_env])
    test_envs, trackers = make_eval_envs(args)
    train_envs.seed(args.seed)
    reward_fn = client.reward if client is not None and args.relabel else None
    algorithm = make_sac(args, obs_space, act_space, reward_fn, policy_obs_stats(args, demos))
    actor_optim = wrap_actor_optimizer(args, algorithm, demos, act_space)
    buffer = ReplayBuffer(args.buffer_size)
    train_collector = Collector[CollectStats](algorithm, train_envs, buffer, exploration_noise=True)
    test_collector = Collector[CollectStats](algorithm, test_envs)

    state = TrainState()
    if checkpoint is not None:
        state = restore_sac_checkpoint(checkpoint, algorithm, buffer)
        truncate_metrics(run_dir / "metrics.csv", state.env_step, METRICS)
        log.info("resumed from %s at env step %d", checkpoint.path, state.env_step)
        train_envs.seed(args.seed + state.env_step)
    elif args.bc_init_epochs > 0:
        initialise_actor_by_cloning(args, algorithm.policy.actor, demos, act_space)
    train_collector.reset(reset_buffer=False)  # keep a resumed replay buffer
    store = sac_checkpoint_store(run_dir)
    writer = SummaryWriter(str(run_dir / "tb"))
    stop = StopRequest()
    progress = Progress(args, state.env_step)
    last_eval, stats = float("nan"), {}
    actor_optim.skipped = min(state.n_updates, args.actor_hold_updates)  # a resumed hold goes on
    if checkpoint is not None:  # a resumed bar shows where the run stood, not nan
        last_eval = last_evaluation_return(run_dir / "metrics.csv")
        stats = learner_stats(client)
    sac_stats: SACTrainingStats | None = None
    session_start, wall_before = time.time(), state.wall_time
    try:
        while state.env_step < args.steps and not stop.requested:
            random = state.env_step < args.start_steps
            n = min(args.chunk, args.steps - state.env_step)
            if random:
                n = min(n, args.start_steps - state.env_step)
                train_collector.collect(n_step=n, random=True)
            else:
                with policy_within_training_step(algorithm.policy):
                    train_collector.collect(n_step=n)  # sampled actions: SAC explores
            state.env_step += n
            if not random:
                if push and not args.overlap:
                    wait_for_discriminator(cast(RewardClient, client))
                with policy_within_training_step(algorithm.policy):
                    for _ in range(n):
                        sac_stats = cast(
                            SACTrainingStats,
                            algorithm.update(buffer=buffer, sample_size=args.batch_size),
                        )
                state.n_updates += n
                if push and args.overlap:
                    wait_for_discriminator(cast(RewardClient, client))
            elapsed = state.wall_time = wall_before + time.time() - session_start
            at_eval = state.env_step // args.eval_every > (state.env_step - n) // args.eval_every
            if at_eval or state.env_step >= args.steps:
                returns = evaluate(test_collector, test_envs, 10_000 + state.env_step)
                last_eval = float(returns.mean())
                stats = learner_stats(client)
                record_evaluation(
                    run_dir, writer, state, (returns, mean_travelled(trackers)), stats,
                    sac_stats, training_diagnostics(algorithm, buffer, client), elapsed,
                    actor_optim.last_cloning_mse,
                )  # fmt: skip
                if state.best_return is None or last_eval > state.best_return:
                    state.best_return, state.best_step = last_eval, state.env_step
                    torch.save(algorithm.policy.actor.state_dict(), run_dir / "best_actor.pt")
                write_learning_curve(run_dir, expert, f"{run_label(args)} on {args.env}")
                save_paired_checkpoint(store, algorithm, buffer, state, client)
                if args.target_return is not None and last_eval >= args.target_return:
                    log.info(
                        "evaluation return %.1f reached --target-return %.1f at env step %d",
                        last_eval,
                        args.target_return,
                        state.env_step,
                    )
                    break
            progress.update(
                state.env_step,
                n,
                {
                    "eval": f"{last_eval:.0f}",
                    "D_exp": f"{stats.get('d_reward/expert', float('nan')):.2f}",
                    "D_agent": f"{stats.get('d_reward/agent', float('nan')):.2f}",
                },
            )
    finally:
        progress.close()
        writer.close()
    if stop.requested:
        save_paired_checkpoint(store, algorithm, buffer, state, client)
    return summarize(run_dir, expert, state)


def run_label(args: TrainArgs) -> str:
    """What a run trained on, for plot titles."""
    if args.reward == "env":
        return f"SAC ({args.sac_recipe} recipe) on the true reward"
    return args.algo + (" (frozen D)" if args.reward == "frozen" else "")


def learner_stats(client: RewardClient | None) -> dict[str, float]:
    return {} if client is None else cast(dict[str, float], client.stats()["learner"])


def sac_checkpoint_store(run_dir: Path) -> CheckpointStore:
    return CheckpointStore(run_dir / "checkpoints", keep=2)


def save_paired_checkpoint(
    store: CheckpointStore,
    algorithm: SAC,
    buffer: ReplayBuffer,
    state: TrainState,
    client: RewardClient | None,
) -> Path:
    """SAC's checkpoint, recording the server checkpoint written just before it, which is the
    one `latest_sac_checkpoint`'s caller hands a resumed server."""
    if client is not None:
        state.server_generation = client.checkpoint()["generation"]
    return save_sac_checkpoint(store, algorithm, buffer, state)


def evaluation_returns(metrics_path: Path) -> list[float]:
    """Mean evaluation return of every row of a run's metrics.csv (none for a fresh run)."""
    rows = list(csv.DictReader(metrics_path.open())) if metrics_path.exists() else []
    return [float(row["eval_return_mean"]) for row in rows]


def last_evaluation_return(metrics_path: Path) -> float:
    returns = evaluation_returns(metrics_path)
    return returns[-1] if returns else float("nan")


def summarize(run_dir: Path, expert: float, state: TrainState) -> dict[str, float]:
    returns = evaluation_returns(run_dir / "metrics.csv")
    final = returns[-1] if returns else float("nan")
    best = max(returns, default=float("nan"))
    summary = {
        "env_steps": float(state.env_step),
        "best_return": best,
        "final_return": final,
        "expert_return": expert,
        # a fraction of the expert's return means something only for positive returns
        "best_fraction_of_expert": best / expert if expert > 0 else float("nan"),
        "final_fraction_of_expert": final / expert if expert > 0 else float("nan"),
    }
    write_json(run_dir / "summary.json", summary)
    print("\n" + "\n".join(f"{k:>26}  {v:12.3f}" for k, v in summary.items()), flush=True)
    return summary


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


@dataclass(frozen=True)
class CloningTerm:
    """TD3+BC's cloning term as `ActorOptimizer` adds it: `weight` x |actor loss| x the
    actor's action error on `batch_size` demo pairs drawn per update."""

    actor: torch.nn.Module
    loss: DemoCloningLoss
    weight: float
    batch_size: int


class ActorOptimizer:
    """SAC's actor optimiser, optionally holding its first `hold` steps (critics and alpha
    still learn) and adding a behaviour-cloning term to the actor's loss.

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
    ) -> None:
        self.inner, self.hold, self.skipped, self.cloning = inner, hold, 0, cloning
        self.gen = torch.Generator().manual_seed(seed)
        self.last_cloning_mse = float("nan")

    def step(
        self, loss: torch.Tensor, retain_graph: bool | None = None, create_graph: bool = False
    ) -> None:
        if self.skipped < self.hold:
            self.skipped += 1
            return
        if self.cloning is not None:
            term = self.cloning
            idx = torch.randint(len(term.loss.obs), (term.batch_size,), generator=self.gen)
            mse = term.loss(term.actor, idx)
            self.last_cloning_mse = float(mse.detach())
            loss = loss + term.weight * loss.detach().abs() * mse
        self.inner.step(loss, retain_graph=retain_graph, create_graph=create_graph)


def wrap_actor_optimizer(
    args: TrainArgs, algorithm: SAC, demos: DemoSet, act_space: gym.spaces.Box
) -> ActorOptimizer:
    """Puts an `ActorOptimizer` with the run's hold and cloning term in SAC's place."""
    cloning = None
    if args.bc_weight > 0:
        loss = DemoCloningLoss(demos, act_space)
        cloning = CloningTerm(algorithm.policy.actor, loss, args.bc_weight, args.batch_size)
    optim = ActorOptimizer(algorithm.policy_optim, args.actor_hold_updates, cloning, args.seed)
    algorithm.policy_optim = optim  # type: ignore[assignment]
    return optim


def initialise_actor_by_cloning(
    args: TrainArgs, actor: torch.nn.Module, demos: DemoSet, act_space: gym.spaces.Box
) -> None:
    for _ in behaviour_cloning(actor, demos, act_space, args.bc_init_epochs, args.seed):
        pass
    log.info("actor initialised by %d epochs of behaviour cloning", args.bc_init_epochs)


def train_bc(args: TrainArgs, demos: DemoSet, expert: float) -> dict[str, float]:
    """Behaviour cloning baseline: the same actor, regressed onto the demo actions."""
    run_dir = args.run_path
    obs_space, act_space = box_spaces(args.env)
    algorithm = make_sac(args, obs_space, act_space, None, policy_obs_stats(args, demos))
    actor = algorithm.policy.actor
    test_envs, trackers = make_eval_envs(args)
    collector = Collector[CollectStats](algorithm, test_envs)
    state, start = TrainState(), time.time()
    for epoch in behaviour_cloning(actor, demos, act_space, args.bc_epochs, args.seed):
        if epoch % max(1, args.bc_epochs // 10) == 0 or epoch == args.bc_epochs:
            returns = evaluate(collector, test_envs, 10_000 + epoch)
            if state.best_return is None or returns.mean() > state.best_return:
                state.best_return, state.best_step = float(returns.mean()), epoch
                torch.save(actor.state_dict(), run_dir / "best_actor.pt")
            append_metrics(
                run_dir / "metrics.csv",
                {
                    "env_step": epoch,
                    "eval_return_mean": float(returns.mean()),
                    "eval_return_std": float(returns.std()),
                    "eval_x_travelled": mean_travelled(trackers),
                    "wall_time": time.time() - start,
                },
                BC_METRICS,
            )
    write_learning_curve(run_dir, expert, f"bc on {args.env} (x: epochs)")
    state.env_step = args.bc_epochs
    return summarize(run_dir, expert, state)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_train_args(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(1)
    try:
        train(args_from_namespace(parser.parse_args(argv)))
    except RunDirInUse as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
