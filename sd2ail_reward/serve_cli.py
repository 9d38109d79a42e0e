"""`sd2ail-reward serve`: its flags, from `ServeArgs` (the server's `ServeOptions`, the
learner's `LearnerFlags` and the demos), and the learner configuration they choose."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import tyro

from sd2ail_reward.config import Algo, LearnerConfig, preset, preset_for_env
from sd2ail_reward.config import replace as replace_config
from sd2ail_reward.flags import parse
from sd2ail_reward.server.options import ServeOptions

SERVE_HELP = "run the gRPC reward server"

PORT_LINE = "SD2AIL_SERVER_PORT"
"""`serve` prints ``SD2AIL_SERVER_PORT=<port>`` on stdout (flushed) once it listens."""


@dataclass(frozen=True)
class LearnerFlags:
    """The learner: --algo and --preset choose it; the other flags override the preset's values."""

    algo: Algo = "sd2ail"
    """Algorithm."""
    preset: str | None = None
    """Per-env hyperparameters: hopper, walker2d, halfcheetah, ant, pendulum (None: the store's)."""
    seed: int = 0
    """Learner seed."""
    device: str = "auto"
    """Torch device of the discriminator: auto (cuda if available, else cpu), cpu, cuda:1, ..."""
    hidden_dim: int | None = None
    """Width of the discriminator network."""
    lr: float | None = None
    """Discriminator Adam learning rate."""
    expert_batch: int | None = None
    """Expert rows per discriminator update."""
    agent_batch: int | None = None
    """Agent rows per discriminator update."""
    min_agent_size: int | None = None
    """Pushed transitions needed before training starts."""
    agent_capacity: int | None = None
    """Capacity of the agent transition buffer."""
    updates_per_transition: float | None = None
    """Discriminator updates per pushed transition (disc_updates_per_transition)."""
    candidates_per_update: int | None = None
    """Pseudo-expert candidates per update (SD2AIL)."""
    refresh_every: int | None = None
    """Updates between pseudo-expert generation rounds."""
    diffusion_steps: int | None = None
    """Diffusion steps T of the discriminator."""
    compute_dtype: Literal["float32", "bfloat16"] | None = None
    """Forward passes on the CPU in bfloat16 (autocast; not the paper's arithmetic) or float32."""
    normalize_obs: bool | None = None
    """Discriminate on obs z-scored by the expert's mean / std (the preset's: Hopper, Walker on)."""


@dataclass(frozen=True)
class ServeArgs:
    """Flags of `sd2ail-reward serve`, one per field."""

    demos: Path
    """Zarr demo store (e.g. demos/Hopper-v5.zarr)."""
    num_demos: int | None = None
    """Expert episodes to use, the store's first ones (None: all)."""
    demo_episodes: tuple[int, ...] | None = None
    """Explicit store indices of the expert episodes to use (instead of --num-demos)."""
    demo_subsample: int = 1
    """Keep every n-th (s, a) pair of each demo episode (GAIL's protocol: 20)."""
    torch_threads: int = 0
    """Torch intra-op threads; 0: half the cores, 1 to 4 (oversubscribed OpenMP is slow)."""
    cpus: tuple[int, ...] | None = None
    """Pin the server to these CPU cores (Linux), before it starts any thread (None: any)."""
    learner: tyro.conf.OmitArgPrefixes[LearnerFlags] = field(default_factory=LearnerFlags)
    server: tyro.conf.OmitArgPrefixes[ServeOptions] = field(default_factory=ServeOptions)


def parse_serve_args(argv: Sequence[str] | None = None) -> ServeArgs:
    return parse(ServeArgs, argv, prog="sd2ail-reward serve", description=SERVE_HELP)


LEARNER_FLAG_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("hidden_dim", "diffusion", "hidden_dim"),
    ("hidden_dim", "discriminator", "mlp_hidden_dim"),
    ("diffusion_steps", "diffusion", "n_timesteps"),
    ("compute_dtype", "discriminator", "compute_dtype"),
    ("lr", "discriminator", "lr"),
    ("expert_batch", "discriminator", "expert_batch"),
    ("agent_batch", "discriminator", "agent_batch"),
    ("candidates_per_update", "synthetic", "candidates_per_update"),
    ("refresh_every", "synthetic", "refresh_every"),
    ("min_agent_size", "", "min_agent_size"),
    ("agent_capacity", "", "agent_capacity"),
    ("updates_per_transition", "", "disc_updates_per_transition"),
    ("normalize_obs", "", "normalize_obs"),
)
"""(LearnerFlags field, LearnerConfig section or "" for the top level, field it sets)."""


def learner_config(flags: LearnerFlags, env_id: str) -> LearnerConfig:
    """The preset for `env_id` (or --preset) and --algo, with the shaping flags applied.

    An env of your own has no preset: `--preset NAME` serves its store with that preset's
    hyperparameters (the dims come from the store). A preset found from the store's env id
    must be for exactly that env (a Hopper-v4 store does not get Hopper-v5's silently)."""
    try:
        name = flags.preset or preset_for_env(env_id)
    except ValueError as err:
        raise ValueError(f"{err}; --preset NAME serves it with that preset's settings") from None
    config = preset(name, flags.algo)
    if config.env_id != env_id:
        if flags.preset is None:
            raise ValueError(
                f"preset {name!r} is for {config.env_id}, but the demo store holds {env_id} "
                f"demos; --preset {name} serves them with its settings all the same"
            )
        config = replace_config(config, env_id=env_id)
    changes: dict[str, dict[str, object]] = {"": {}}
    for flag, section, field_name in LEARNER_FLAG_FIELDS:
        value = getattr(flags, flag)
        if value is not None:
            changes.setdefault(section, {})[field_name] = value
    sections = {
        section: dataclasses.replace(getattr(config, section), **fields)
        for section, fields in changes.items()
        if section
    }
    return replace_config(config, **sections, **changes[""])


def run_serve(argv: Sequence[str]) -> int:
    import torch

    from sd2ail_reward.demos import read_demos
    from sd2ail_reward.server import LearnerSpec, TokenFileError, serve

    args = parse_serve_args(argv)
    if args.cpus is not None:
        try:
            pin_to_cores(args.cpus)
        except (ValueError, OSError) as err:
            print(f"sd2ail-reward serve: error: --cpus: {err}", file=sys.stderr, flush=True)
            return 2
    torch.set_num_threads(args.torch_threads or auto_torch_threads())
    try:
        env_id = read_demos_env(args.demos, read_demos)
        spec = LearnerSpec(
            demos=args.demos,
            config=learner_config(args.learner, env_id),
            num_demos=args.num_demos,
            episodes=args.demo_episodes,
            subsample=args.demo_subsample,
            seed=args.learner.seed,
            device=args.learner.device,
        )

        def announce(port: int) -> None:
            print(f"{PORT_LINE}={port}", flush=True)

        return serve(spec, args.server, announce=announce)
    except (ValueError, FileNotFoundError, TokenFileError, OSError) as err:
        print(f"sd2ail-reward serve: error: {err}", file=sys.stderr, flush=True)
        return 2


def pin_to_cores(cores: Sequence[int]) -> None:
    """Pin the calling thread, and so every thread it starts from now on, to `cores`."""
    if not hasattr(os, "sched_setaffinity"):
        raise OSError("CPU pinning needs Linux (os.sched_setaffinity)")
    if not cores:
        raise ValueError("no cores given")
    os.sched_setaffinity(0, set(cores))


def auto_torch_threads() -> int:
    """Half the cores, between 1 and 4: the batcher and the trainer each run torch, and
    oversubscribed OpenMP threads spin against each other (and against other processes)."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def read_demos_env(path: Path, read: Callable[..., object]) -> str:
    """The env id of a demo store (ValueError / FileNotFoundError if it is unusable)."""
    demos = read(path, num_episodes=1)
    return str(demos.env_id)  # type: ignore[attr-defined]
