"""Training settings: the `train` flags as one frozen dataclass, and SAC recipes (coherent
sets of SAC settings) that single flags override."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import gymnasium as gym
import tyro

from sd2ail_reward.discriminator import cpu_bf16_supported
from sd2ail_reward.flags import parse

TrainAlgo = Literal["sd2ail", "diffail", "pedr_only", "pseudo_only", "gail", "bc"]

RewardSource = Literal["learned", "frozen", "env"]

SacRecipeName = Literal["reference", "expert"]

_T = TypeVar("_T")
RecipeField = Annotated[_T, tyro.conf.arg(help_behavior_hint="(default: the --sac-recipe's)")]
"""A `TrainArgs` field that the chosen SAC recipe sets unless its flag is given."""


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


SAC_RECIPES: dict[SacRecipeName, SacRecipe] = {
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


DEFAULT_RECIPE: SacRecipeName = "reference"

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
    """Flags of `sd2ail-reward train`, one per field; also the run's config.json."""

    env: str = "Hopper-v5"
    """Gymnasium env id."""
    demos: str = "demos/Hopper-v5.zarr"
    """Zarr demo store of that env; '' with --reward env trains SAC from scratch (an expert)."""
    num_demos: int = 1
    """Expert episodes: the store's first ones."""
    demo_episodes: tuple[int, ...] | None = None
    """Explicit store indices of the expert episodes (instead of --num-demos)."""
    demo_subsample: int = 1
    """Keep every n-th (s, a) pair of each demo episode (GAIL's protocol: 20)."""
    algo: TrainAlgo = "sd2ail"
    """Reward learner, or bc (no server)."""
    steps: int = 250_000
    """Env steps, warm-up included."""
    seed: int = 0
    """Seed of SAC, the envs and the reward learner."""
    server: str | None = None
    """host:port of a running reward server (None: start a local one)."""
    token: str | None = None
    """Token for --server (None: $SD2AIL_REWARD_TOKEN)."""
    run_dir: str = ""
    """Output directory ('': runs/<algo>-<env>-seed<seed>)."""
    resume: bool = False
    """Continue the run in --run-dir."""
    relabel: bool = True
    """Relabel sampled batches with the current D (--no-relabel: the step-time reward)."""
    relabel_prefetch: bool = True
    """Score the next sampled batch while SAC updates on this one (`RelabelingSAC`)."""
    overlap: bool = True
    """SAC updates while D trains on the chunk, then Sync (--no-overlap: D first)."""
    reward: RewardSource = "learned"
    """What SAC learns from: learned (imitation), frozen (a never-trained D) or env (no server)."""
    eval_every: int = 10_000
    """Env steps between evaluations."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    target_return: float | None = None
    """Stop once an evaluation's mean true return reaches this (None: run all steps)."""
    target_full_episodes: bool = False
    """Count an evaluation toward --target-return and best_actor only when none of its
    episodes ended before the env's time limit (an expert whose episodes fall makes no store)."""
    start_steps: int = 5_000
    """Uniform random warm-up steps."""
    chunk: int = 1_000
    """Env steps between blocks of updates (1 D + 1 SAC update per env step)."""
    batch_size: int = 256
    """SAC minibatch."""
    buffer_size: int = 1_000_000
    """Replay buffer capacity."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """SAC MLP sizes."""
    sac_recipe: SacRecipeName = DEFAULT_RECIPE
    """SAC settings (`SAC_RECIPES`): the SD2AIL code's, or those that trained our experts."""
    lr: RecipeField[float] = SAC_RECIPES[DEFAULT_RECIPE].lr
    """Adam lr of actor, critics and alpha."""
    adam_beta1: RecipeField[float] = SAC_RECIPES[DEFAULT_RECIPE].adam_beta1
    """Adam beta1."""
    gamma: float = 0.99
    """Discount."""
    tau: float = 0.005
    """Target network Polyak coefficient."""
    alpha: RecipeField[float] = SAC_RECIPES[DEFAULT_RECIPE].alpha
    """Initial entropy coefficient, auto-tuned."""
    target_entropy: float | None = None
    """Entropy target of the alpha tuning (None: the recipe's multiple of -|A|)."""
    fixed_length: RecipeField[bool] = SAC_RECIPES[DEFAULT_RECIPE].fixed_length
    """MuJoCo training episodes run the full horizon, not ending when the robot falls."""
    normalize_obs: bool | None = None
    """SAC sees obs normalised with the demos' stats (None: `policy_sees_normalized_obs`)."""
    bc_epochs: int = 200
    """Epochs of --algo bc."""
    bc_init_epochs: int = 0
    """Start SAC's actor from behaviour cloning on the demos, this many epochs (not in paper)."""
    actor_hold_updates: int = 0
    """Skip the actor's first N steps while the critics learn (for a --bc-init-epochs actor)."""
    bc_weight: float = 0.0
    """TD3+BC's term in SAC's actor loss: weight x mean|Q| x MSE to demo actions (not in paper)."""
    critic_layer_norm: bool = False
    """LayerNorm in both critics, bounding Q far from the data (RLPD; not in the paper)."""
    sac_init: Literal["tianshou", "rlkit"] = "tianshou"
    """Initial weights: Tianshou's (PyTorch defaults) or the reference's rlkit (small heads)."""
    policy_reg: float = 0.0
    """rlkit's actor-loss term: this x (mean mu^2 + mean log sigma^2); the reference: 1e-3."""
    pin_cores: bool = False
    """Pin train to its first allowed core and the local server to the others (Linux): SAC
    then never waits for a core the server's threads hold. Faster when the server's work fits
    in the other cores (a bf16 server at 1 disc update per 4 env steps), slower when not."""
    sac_threads: int = 1
    """torch threads of train's process (SAC's update): 1 leaves the other cores to the local
    server; 2 lets SAC's update use a core the server leaves idle (benchmarks/thread_scaling.py)."""
    sac_dtype: Literal["float32", "bfloat16"] = "float32"
    """Arithmetic of SAC's hidden layers in its update: bfloat16 autocasts the actor's and
    critics' trunks (heads, losses, targets and Adam stay float32; `agents/mixed_precision.py`),
    ~1.6x less arithmetic here; refused on CPUs without native bf16."""
    server_args: Annotated[
        tuple[str, ...], tyro.conf.arg(name="server-arg"), tyro.conf.UseAppendAction
    ] = ()
    """Extra flag for the local server, e.g. --server-arg=--hidden-dim=64."""
    progress: bool = True
    """A progress bar, or log lines."""

    @property
    def run_path(self) -> Path:
        if self.run_dir:
            return Path(self.run_dir)
        if self.reward == "env":
            return Path(f"runs/sac-envreward-{self.sac_recipe}-{self.env}-seed{self.seed}")
        return Path(f"runs/{self.algo}-{self.env}-seed{self.seed}")


def parse_train_args(argv: Sequence[str] | None = None) -> TrainArgs:
    """The `train` flags. The fields a SAC recipe sets default to the chosen --sac-recipe's
    values, which tyro needs before it parses: a first pass reads which recipe it is."""
    prog, description = "sd2ail-reward train", "SAC through the one training loop."
    chosen = parse(TrainArgs, argv, prog=prog, description=description).sac_recipe
    args = parse(
        TrainArgs, argv, prog=prog, description=description, default=recipe_defaults(chosen)
    )
    if args.sac_threads < 1:
        print(f"error: --sac-threads must be >= 1, got {args.sac_threads}", file=sys.stderr)
        raise SystemExit(2)
    if args.sac_dtype == "bfloat16" and not cpu_bf16_supported():
        print(
            "error: --sac-dtype bfloat16 needs a CPU with native bf16 (AVX512-BF16 or AMX)",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return args


RECIPE_FIELDS = ("lr", "adam_beta1", "alpha", "fixed_length")
"""The `TrainArgs` fields a SAC recipe sets (unless their flags are given)."""


def recipe_defaults(name: SacRecipeName) -> TrainArgs:
    """`TrainArgs()` with the fields a SAC recipe sets taken from recipe `name`."""
    recipe = SAC_RECIPES[name]
    return TrainArgs(sac_recipe=name, **{key: getattr(recipe, key) for key in RECIPE_FIELDS})


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
