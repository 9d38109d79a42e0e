"""`sd2ail-reward`: the command line.

    sd2ail-reward serve --demos demos/Hopper-v5.zarr --port 50051
    sd2ail-reward demos inspect|verify|record|import-minari|export-minari ...
    sd2ail-reward train ... / plot ...      (the agent side: agents/train.py, agents/plot.py)

Each command parses its own flags from frozen dataclasses (tyro): `serve` in serve_cli.py,
the `demos` actions in demos_cli.py, `train`, `plot` and `demos record` in their agent scripts.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from sd2ail_reward.demos_cli import DEMOS_ACTIONS, run_demos
from sd2ail_reward.serve_cli import SERVE_HELP, run_serve

__all__ = ["build_parser", "main"]

DEMOS_HELP = "inspect, verify, record or convert (Minari) a zarr demo store"
RECORD_HELP = (
    "Record a trained run's actor into a demo store (agents/expert.py; needs the agents "
    "extra); see its --help"
)


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

_AGENT_COMMANDS = {
    "train": (
        "agents.train",
        "train an agent on the learned reward (the main job) or the env's; see `train --help`",
    ),
    "plot": ("agents.plot", "learning curves of runs and a PCA of expert vs pseudo-experts"),
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser. It only routes: it reads --log-level and the command (and the
    `demos` action) and leaves the rest of the line to that command's own (tyro) parser, so
    argparse here holds no command's flags or defaults."""
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
    sub.add_parser("serve", help=SERVE_HELP, add_help=False)
    demos = sub.add_parser("demos", help=DEMOS_HELP, description=DEMOS_HELP)
    actions = demos.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, cls in DEMOS_ACTIONS.items():
        actions.add_parser(name, help=cls.__doc__, add_help=False)
    actions.add_parser("record", help=RECORD_HELP, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Console script `sd2ail-reward`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _AGENT_COMMANDS:
        return _run_agent_script(_AGENT_COMMANDS[argv[0]][0], argv[1:])
    if argv[:2] == ["demos", "record"]:
        return _run_agent_script("agents.expert", argv[2:])
    args, rest = build_parser().parse_known_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "serve":
        return run_serve(rest)
    if args.command == "demos" and args.action in DEMOS_ACTIONS:
        return run_demos(args.action, rest)
    # An agent command after --log-level (its own logging set-up is then a no-op).
    module = "agents.expert" if args.command == "demos" else _AGENT_COMMANDS[args.command][0]
    return _run_agent_script(module, rest)


if __name__ == "__main__":
    sys.exit(main())
