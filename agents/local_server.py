"""The reward server a `train` run starts for itself, and waiting for its discriminator."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import grpc

from agents.recipes import TrainArgs
from sd2ail_reward.client import RewardClient, RewardServiceError
from sd2ail_reward.spawn import LocalServer

log = logging.getLogger("sd2ail.train")


def start_local_server(
    args: TrainArgs, run_dir: Path, resume_from: str = "", server_cores: Sequence[int] = ()
) -> LocalServer:
    """The run's own reward server (`sd2ail_reward.spawn.LocalServer`: 127.0.0.1, a free port,
    the run's write token in RUN_DIR/token, its log in RUN_DIR/server.log, its own session so a
    signal to train's process group leaves it to train to stop), resuming from `resume_from`,
    the server checkpoint saved with the SAC checkpoint train resumes from."""
    serve_args = local_serve_args(args, run_dir, resume_from, server_cores)
    log.info("starting reward server: serve %s", " ".join(serve_args))
    return LocalServer(serve_args, token_file=run_dir / "token", log_path=run_dir / "server.log")


def local_serve_args(
    args: TrainArgs, run_dir: Path, resume_from: str = "", server_cores: Sequence[int] = ()
) -> list[str]:
    """`serve`'s flags for the run's own server; pinned to `server_cores` when given."""
    serve_args = [
        "--demos", args.demos, "--algo", args.algo, "--seed", str(args.seed),
        "--checkpoint-dir", str(run_dir / "server"),
        # checkpoints only when train asks (with its own) and at shutdown, so that the
        # generation a resume pairs with is never pruned by periodic ones
        "--checkpoint-every", "0",
        *(["--resume-from", resume_from] if resume_from else ["--resume"]),
        "--min-agent-size", str(max(args.start_steps, 256)),
    ]  # fmt: skip
    if args.demo_episodes:
        serve_args += ["--demo-episodes", *map(str, args.demo_episodes)]
    else:
        serve_args += ["--num-demos", str(args.num_demos)]
    if args.demo_subsample != 1:
        serve_args += ["--demo-subsample", str(args.demo_subsample)]
    if args.reward == "frozen":
        serve_args += ["--no-train"]
    if server_cores:
        serve_args += ["--cpus", *map(str, server_cores)]
    serve_args += list(args.server_args)
    return serve_args


def split_cores(allowed: Sequence[int]) -> tuple[int, list[int]]:
    """(train's core, the server's cores) for `--pin-cores`: the first allowed core for SAC,
    the rest for the server."""
    cores = sorted(allowed)
    if len(cores) < 2:
        raise ValueError(f"--pin-cores needs at least 2 allowed cores, this process has {cores}")
    return cores[0], cores[1:]


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
