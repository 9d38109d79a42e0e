"""`sd2ail-reward demos inspect|verify|import-minari|export-minari`: each action's flags are a
frozen dataclass (tyro: fields are flags, their docstrings the help). `demos record` is the
agent side's (agents/expert.py), delegated by cli.py."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from sd2ail_reward.flags import parse

STORE = Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="STORE")]
"""A demo store, given first (`demos verify demos/Hopper-v5.zarr`)."""


@dataclass(frozen=True)
class InspectArgs:
    """Table of episodes, returns and provenance."""

    store: STORE
    """Zarr demo store."""


@dataclass(frozen=True)
class VerifyArgs:
    """Replay every episode from its reset seed."""

    store: STORE
    """Zarr demo store."""
    num_episodes: int | None = None
    """Check only the first N episodes (None: all)."""
    tol: float = 1e-5
    """Allowed deviation."""


@dataclass(frozen=True)
class ImportMinariArgs:
    """Convert a Minari dataset (a local dataset id or its directory) to a demo store."""

    source: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="DATASET_ID_OR_PATH")]
    """Minari dataset id (in the local Minari root) or dataset directory."""
    out: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="OUT.zarr")]
    """Demo store to write."""
    episodes: tuple[int, ...] | None = None
    """Minari episode ids (None: all)."""
    env_id: str | None = None
    """Env id, for a dataset that records no env spec."""
    overwrite: bool = False
    """Replace an existing OUT.zarr."""


@dataclass(frozen=True)
class ExportMinariArgs:
    """Write a demo store as a new local Minari dataset."""

    store: STORE
    """Zarr demo store."""
    dataset_id: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="DATASET_ID")]
    """New Minari dataset id, e.g. sd2ail/pendulum/expert-v0."""
    data_format: Literal["hdf5", "arrow"] | None = None
    """Minari storage format (None: Minari's default)."""


DemosArgs = InspectArgs | VerifyArgs | ImportMinariArgs | ExportMinariArgs

DEMOS_ACTIONS: dict[str, type[DemosArgs]] = {
    "inspect": InspectArgs,
    "verify": VerifyArgs,
    "import-minari": ImportMinariArgs,
    "export-minari": ExportMinariArgs,
}
"""The actions parsed here, by name (the minari ones need the minari extra)."""


def parse_demos_args(action: str, argv: Sequence[str]) -> DemosArgs:
    cls = DEMOS_ACTIONS[action]
    return parse(cls, argv, prog=f"sd2ail-reward demos {action}", description=cls.__doc__)


def run_demos(action: str, argv: Sequence[str]) -> int:
    """Run `demos <action>` on its flags; 2 on an unusable store or dataset, 1 on a failed
    verification."""
    args = parse_demos_args(action, argv)
    if isinstance(args, ImportMinariArgs | ExportMinariArgs):
        return run_minari(args)
    from sd2ail_reward.demo_replay import inspect_demos, verify_demos

    try:
        if isinstance(args, InspectArgs):
            print(inspect_demos(args.store))
            return 0
        report = verify_demos(args.store, num_episodes=args.num_episodes, tol=args.tol)
    except (ValueError, FileNotFoundError) as err:
        print(f"sd2ail-reward demos: error: {err}", file=sys.stderr)
        return 2
    print(
        f"{args.store}: {report.n_episodes} episodes replayed, max obs deviation "
        f"{report.max_obs_dev:.3g}, max reward deviation {report.max_reward_dev:.3g}: "
        f"{'OK' if report.ok else 'FAILED'}"
    )
    for problem in report.problems:
        print(f"  {problem}")
    return 0 if report.ok else 1


def run_minari(args: ImportMinariArgs | ExportMinariArgs) -> int:
    from sd2ail_reward import minari_io

    try:
        if isinstance(args, ImportMinariArgs):
            done = minari_io.import_minari(
                args.source,
                args.out,
                episodes=args.episodes,
                env_id=args.env_id,
                overwrite=args.overwrite,
            )
            print(
                f"{done.store}: {done.n_episodes} episodes, {done.n_steps} steps of "
                f"{done.env_id} from Minari dataset {done.dataset_id}"
            )
            if done.unreplayable_episodes:
                print(
                    f"  episodes {list(done.unreplayable_episodes)} have no int64 reset seed "
                    "(their Minari seeds are kept in attrs minari_seeds); `demos verify` "
                    "cannot replay them"
                )
            if done.dropped_info_keys:
                print(f"  per-step infos not kept: {list(done.dropped_info_keys)}")
        else:
            out = minari_io.export_minari(args.store, args.dataset_id, data_format=args.data_format)
            print(
                f"Minari dataset {out.dataset_id} at {out.path}: {out.n_episodes} episodes, "
                f"{out.n_steps} steps of {out.env_id}"
            )
    except (ValueError, FileNotFoundError, FileExistsError, ModuleNotFoundError) as err:
        print(f"sd2ail-reward demos: error: {err}", file=sys.stderr)
        return 2
    return 0
