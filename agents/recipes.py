"""Training settings: the `train` flags as one frozen dataclass, and SAC recipes (coherent
sets of SAC settings) that single flags override."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import gymnasium as gym

ALGOS = ("sd2ail", "diffail", "pedr_only", "pseudo_only", "gail", "bc")


REWARD_SOURCES = ("learned", "frozen", "env")
"""learned: the reward server's, trained on the pushed transitions (imitation); frozen: the
same server's discriminator never trained (a control); env: the env's own reward, no server
(experts, and the true-reward control: the ceiling SAC reaches with a recipe)."""


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

PENDULUM_CI_FLAGS: tuple[str, ...] = (
    "--env", "Pendulum-v1", "--demos", "demos/Pendulum-v1.zarr", "--demo-episodes", "6",
    "--start-steps", "1000", "--chunk", "250", "--eval-every", "1000", "--eval-episodes", "10",
    "--hidden-sizes", "128", "128",
    "--server-arg=--hidden-dim=64", "--server-arg=--expert-batch=128",
    "--server-arg=--agent-batch=128", "--server-arg=--candidates-per-update=128",
)  # fmt: skip
"""Pendulum-v1 from ONE demo (store episode 6, a swing-up) on a budget that fits CI: a 2 x 128
SAC, a 3 x 64 denoiser, 128 expert + 128 agent + 896 pseudo rows per update, 128 candidates
per update (the paper's Hopper settings: 2 x 256, 3 x 256, 256 + 256 + 1792, 256). The CI
learning test and its calibration grid (`benchmarks/grid.py pendulum-ci`) both run these."""


@dataclass(frozen=True)
class TrainArgs:
    """Flags of `sd2ail-reward train` (SAC recipes: `SAC_RECIPES`)."""

    env: str = "Hopper-v5"
    demos: str = "demos/Hopper-v5.zarr"
    num_demos: int = 1
    demo_episodes: tuple[int, ...] | None = None
    demo_subsample: int = 1
    """Keep every n-th (s, a) pair of each demo episode (GAIL's protocol: 20)."""
    algo: str = "sd2ail"
    steps: int = 250_000
    seed: int = 0
    server: str | None = None
    token: str | None = None
    run_dir: str = ""
    resume: bool = False
    relabel: bool = True
    relabel_prefetch: bool = True
    """Score the next sampled batch while SAC updates on this one (`RelabelingSAC`)."""
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
    a(
        "--demos",
        default=d.demos,
        help="zarr demo store of that env; '' with --reward env trains SAC from scratch, as for "
        "a new expert (default: %(default)s)",
    )
    a("--num-demos", type=int, default=d.num_demos, help="expert episodes (the first ones)")
    a("--demo-episodes", type=int, nargs="+", help="explicit store indices of the episodes")
    a(
        "--demo-subsample",
        type=int,
        default=d.demo_subsample,
        help="keep every N-th (s, a) pair of each demo episode, for the reward server, BC and "
        "the demo statistics (GAIL's protocol: 20; default: %(default)s, all)",
    )
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
        "--no-relabel-prefetch",
        dest="relabel_prefetch",
        action="store_false",
        help="score each sampled batch only when it is used, instead of while SAC updates on "
        "the one before (default: prefetch)",
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


def policy_sees_normalized_obs(args: TrainArgs) -> bool:
    if args.normalize_obs is not None:
        return args.normalize_obs
    family = args.env.split("-")[0]
    return family in SAC_RECIPES[args.sac_recipe].normalize_obs_envs


def training_env_kwargs(args: TrainArgs) -> dict[str, Any]:
    """Fixed-length training episodes for MuJoCo envs that can fall (the reference ignores
    `done` and resets at the horizon); evaluation always respects termination."""
    if not args.fixed_length:
        return {}
    entry = str(gym.spec(args.env).entry_point)
    if "mujoco" in entry and any(n in args.env for n in ("Hopper", "Walker2d", "Ant")):
        return {"terminate_when_unhealthy": False}
    return {}
