"""Expert demonstrations: a trained actor's deterministic episodes written to a zarr demo store.

Experts are trained by the one training loop on the env's true reward::

    sd2ail-reward train --reward env --sac-recipe expert --env Hopper-v5 \\
        --demos demos/Hopper-v5.zarr --steps 300000 --run-dir runs/expert-Hopper-v5-seed0
    sd2ail-reward demos record --run-dir runs/expert-Hopper-v5-seed0 \\
        --out demos/Hopper-v5.zarr --episodes 40

(`--demos` there only supplies the expert return line of the plots and, for the reference
recipe, observation statistics; the expert recipe uses raw observations.) `record` reads the
run's `actor_spec.json` and `best_actor.pt` (or `actor.pt`), records with
`sd2ail_reward.demo_replay.record_episodes` and copies the weights beside the store.
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import gymnasium as gym
import numpy as np
import tianshou
import torch

from agents.actors import deterministic_policy_fn, policy_from_spec
from agents.run_files import atomic_path, write_json
from sd2ail_reward.flags import parse

log = logging.getLogger("expert")

EXPERT_ALGORITHM: Final = f"SAC (tianshou {tianshou.__version__})"


@dataclass(frozen=True)
class RecordArgs:
    """`record`: demonstrations from a trained expert, written with sd2ail_reward.demos."""

    run_dir: str
    """Training run directory."""
    out: str = ""
    """Demo store to write; empty means demos/<env>.zarr."""
    episodes: int = 40
    """Number of episodes to record."""
    first_seed: int = 10_000
    """Reset seed of the first episode; episode i uses first_seed + i."""
    actor: Literal["best", "latest"] = "best"
    """Actor to use: best_actor.pt or actor.pt."""
    min_return: float | None = None
    """Exit with status 1 when the mean recorded return is below this."""
    max_fallen: int | None = None
    """A store of whole episodes only (an expert that falls 1 time in 20 still passes
    --min-return): leave out up to this many episodes that ended before the time limit, trying
    the next reset seeds until --episodes whole ones are stored; their seeds, lengths and
    returns go in the store's provenance and the expert's json (the unfiltered mean beside the
    stored one). More falls: exit status 1, nothing written. 0 refuses any fall; unset stores
    every episode as it ended."""
    threads: int = 1
    """torch.set_num_threads."""


def parse_args(argv: Sequence[str] | None = None) -> RecordArgs:
    description = (__doc__ or "").split("\n\n")[0]
    return parse(RecordArgs, argv, prog="sd2ail-reward demos record", description=description)


def record(args: RecordArgs) -> np.ndarray:
    # only `record` needs the library
    from sd2ail_reward.demo_replay import TooManyFallsError, record_episodes

    torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    spec = json.loads((run_dir / "actor_spec.json").read_text())
    name = "best_actor" if args.actor == "best" else "actor"
    weights_path = run_dir / f"{name}.pt"
    evaluation = json.loads((run_dir / f"{name}.json").read_text())
    actor_state = torch.load(weights_path, map_location="cpu", weights_only=True)
    policy = policy_from_spec(spec, actor_state)
    env_id = spec["env_id"]
    out = Path(args.out or f"demos/{env_id}.zarr")
    out.parent.mkdir(parents=True, exist_ok=True)

    attrs = {
        "expert_algorithm": EXPERT_ALGORITHM,
        "expert_training_steps": int(evaluation["env_step"]),
        "expert_eval_return": float(evaluation["eval_return_mean"]),
        "expert_eval_return_std": float(evaluation["eval_return_std"]),
        "seed": config["seed"],
        "command": shlex.join([sys.executable, *sys.argv]),
        "expert_weights": f"{env_id}.expert.pt",
    }
    log.info(
        "recording %d episodes of %s with %s (eval return %.1f at step %d) into %s",
        args.episodes,
        env_id,
        weights_path,
        attrs["expert_eval_return"],
        attrs["expert_training_steps"],
        out,
    )
    try:
        recording = record_episodes(
            env_id,
            deterministic_policy_fn(policy),
            path=out,
            n_episodes=args.episodes,
            first_seed=args.first_seed,
            attrs=attrs,
            overwrite=True,
            max_fallen=args.max_fallen,
        )
    except TooManyFallsError as error:
        log.error("%s (--max-fallen %d); no store written", error, args.max_fallen)
        raise SystemExit(1) from error
    returns, discarded = recording.returns, list(recording.discarded_fallen)
    attempted = recording.attempted_returns

    with atomic_path(out.parent / f"{env_id}.expert.pt") as tmp:
        shutil.copyfile(weights_path, tmp)
    write_json(
        out.parent / f"{env_id}.expert.json",
        {
            **spec,
            **{k: v for k, v in attrs.items() if k != "expert_weights"},
            "hyperparameters": {
                k: v
                for k, v in config.items()
                if k not in ("resume", "run_dir", "progress", "server", "token")
            },
            "recorded_episodes": args.episodes,
            "recorded_first_seed": args.first_seed,
            "recorded_return_mean": float(returns.mean()),
            "recorded_return_std": float(returns.std()),
            "discarded_fallen_episodes": discarded,
            "attempted_return_mean": float(attempted.mean()),
            "torch_version": torch.__version__,
            "gymnasium_version": gym.__version__,
            "demo_store": out.name,
        },
    )
    log.info(
        "recorded return %.1f +- %.1f (min %.1f, max %.1f) over %d episodes",
        returns.mean(),
        returns.std(),
        returns.min(),
        returns.max(),
        len(returns),
    )
    if discarded:
        log.info(
            "left out %d fallen episodes %s; mean over all %d tried %.1f",
            len(discarded),
            discarded,
            len(attempted),
            attempted.mean(),
        )
    if args.min_return is not None and returns.mean() < args.min_return:
        log.error("mean recorded return %.1f < --min-return %.1f", returns.mean(), args.min_return)
        raise SystemExit(1)
    return returns


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout
    )
    record(parse_args(argv))


if __name__ == "__main__":
    main()
