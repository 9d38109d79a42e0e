"""`sd2ail-reward`: the command line.

    sd2ail-reward serve --demos demos/Hopper-v5.zarr --port 50051
    sd2ail-reward demos inspect|verify|record|import-minari|export-minari ...
    sd2ail-reward train ... / plot ...      (the agent side: agents/train.py, agents/plot.py)

Subcommands are registered in `_SUBCOMMANDS`; each has an ``add_<name>_args(parser)`` and a
``run_<name>(args) -> int``. `serve` parses its own flags (tyro, from dataclasses) in
`serve_cli.py`, as the agent scripts do theirs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from sd2ail_reward.serve_cli import SERVE_HELP, run_serve

__all__ = ["build_parser", "main"]


def add_demos_args(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="demos_command", required=True, metavar="ACTION")
    inspect = sub.add_parser("inspect", help="table of episodes, returns and provenance")
    inspect.add_argument("store", type=Path)
    verify = sub.add_parser("verify", help="replay every episode from its reset seed")
    verify.add_argument("store", type=Path)
    verify.add_argument("--num-episodes", type=int, help="check only the first N episodes")
    verify.add_argument("--tol", type=float, default=1e-5, help="allowed deviation")
    sub.add_parser(
        "record",
        help="record a trained run's actor into a demo store (agents/expert.py; needs the "
        "agents extra); see its --help",
        add_help=False,
    )
    add_minari_args(sub)


def add_minari_args(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`demos import-minari` / `export-minari` (sd2ail_reward/minari_io.py; minari extra)."""
    imp = sub.add_parser(
        "import-minari",
        help="convert a Minari dataset (a local dataset id or its directory) to a demo store",
    )
    imp.add_argument("source", metavar="DATASET_ID_OR_PATH")
    imp.add_argument("out", type=Path, metavar="OUT.zarr")
    imp.add_argument("--episodes", type=int, nargs="+", help="Minari episode ids (default: all)")
    imp.add_argument("--env-id", help="env id, for a dataset that records no env spec")
    imp.add_argument("--overwrite", action="store_true", help="replace an existing OUT.zarr")
    exp = sub.add_parser("export-minari", help="write a demo store as a new local Minari dataset")
    exp.add_argument("store", type=Path)
    exp.add_argument("dataset_id", metavar="DATASET_ID", help="e.g. sd2ail/pendulum/expert-v0")
    exp.add_argument("--data-format", choices=("hdf5", "arrow"), help="Minari storage format")


def run_minari(args: argparse.Namespace) -> int:
    from sd2ail_reward import minari_io

    try:
        if args.demos_command == "import-minari":
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


def run_demos(args: argparse.Namespace) -> int:
    from sd2ail_reward.demo_replay import inspect_demos, verify_demos

    if args.demos_command in ("import-minari", "export-minari"):
        return run_minari(args)
    try:
        if args.demos_command == "inspect":
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


def _run_agent_script(module: str, argv: Sequence[str]) -> int:
    """Delegate to an agent script (they import Tianshou; the library itself never does)."""
    import importlib

    try:
        script = importlib.import_module(module)
    except ModuleNotFoundError as err:
        print(
            f"sd2ail-reward: {module} needs the agents extra and a source checkout "
            f"(pip install -e '.[agents]'): {err}",
            file=sys.stderr,
        )
        return 2
    result = script.main(list(argv))
    return int(result or 0)


# ------------------------------------------------------------------------------ main

_SUBCOMMANDS: dict[
    str,
    tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]],
] = {
    "demos": ("inspect, verify or record a zarr demo store", add_demos_args, run_demos),
}
_TYRO_COMMANDS: dict[str, tuple[str, Callable[[Sequence[str]], int]]] = {
    "serve": (SERVE_HELP, run_serve),
}
"""Commands that parse the arguments after their name themselves (`--log-level` comes before)."""
_AGENT_COMMANDS = {
    "train": (
        "agents.train",
        "train an agent on the learned reward (the main job) or the env's; see `train --help`",
    ),
    "plot": ("agents.plot", "learning curves of runs and a PCA of expert vs pseudo-experts"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sd2ail-reward",
        description="SD2AIL reward learning served over gRPC to any RL agent.",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="logging level (default: %(default)s)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in _AGENT_COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    for name, (help_text, _) in _TYRO_COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    for name, (help_text, add_args, run) in _SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_args(p)
        p.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `sd2ail-reward`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _AGENT_COMMANDS:
        return _run_agent_script(_AGENT_COMMANDS[argv[0]][0], argv[1:])
    if argv[:2] == ["demos", "record"]:
        return _run_agent_script("agents.expert", argv[2:])
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command not in _TYRO_COMMANDS and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command in _TYRO_COMMANDS:
        return _TYRO_COMMANDS[args.command][1](rest)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
