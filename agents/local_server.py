"""The reward server a `train` run starts for itself, and waiting for its discriminator."""

from __future__ import annotations

import logging
import secrets
import subprocess
import sys
from pathlib import Path

import grpc

from agents.recipes import TrainArgs
from sd2ail_reward.client import RewardClient, RewardServiceError

log = logging.getLogger("sd2ail.train")

PORT_PREFIX = "SD2AIL_SERVER_PORT="


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
