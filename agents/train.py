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
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import torch

from agents.bc import train_bc
from agents.checkpoints import sac_checkpoint_store
from agents.evaluation import expert_return
from agents.local_server import start_local_server
from agents.loop import train_sac
from agents.recipes import (
    TrainArgs,
    add_train_args,
    args_from_namespace,
    policy_sees_normalized_obs,
)
from agents.run_files import write_json
from sd2ail_reward.checkpoint import Checkpoint, CheckpointError
from sd2ail_reward.client import RewardClient
from sd2ail_reward.demos import read_demos

log = logging.getLogger("sd2ail.train")


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
    if not args.demos:  # an expert trained from scratch on the env's reward
        check_runs_without_demos(args)
        return train_sac(args, run_dir, None, float("nan"), None, latest_checkpoint(args))
    demos = read_demos(
        args.demos,
        num_episodes=args.num_demos,
        episodes=args.demo_episodes,
        expected_env_id=args.env,
    )
    expert = expert_return(demos)  # of the whole episodes, before any subsampling
    demos = demos.subsampled(args.demo_subsample)
    if args.algo == "bc" and args.reward != "env":
        return train_bc(args, demos, expert)
    checkpoint = latest_checkpoint(args)
    if args.reward == "env":
        return train_sac(args, run_dir, None, expert, demos, checkpoint)

    paired = checkpoint.meta.get("server_generation", "") if checkpoint is not None else ""
    server = None if args.server else start_local_server(args, run_dir, str(paired))
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


def check_runs_without_demos(args: TrainArgs) -> None:
    """Without --demos only SAC on the env's own reward can run, on raw observations."""
    needs = {
        "--reward learned/frozen (the reward server learns from demos)": args.reward != "env",
        "--algo bc": args.algo == "bc" and args.reward != "env",
        "--bc-init-epochs": args.bc_init_epochs > 0,
        "--bc-weight": args.bc_weight > 0,
        "--normalize-obs (the recipe's choice here)": bool(args.normalize_obs),
    }
    missing = [flag for flag, wanted in needs.items() if wanted]
    if missing:
        raise SystemExit(f"--demos is needed for {', '.join(missing)}")


def latest_checkpoint(args: TrainArgs) -> Checkpoint | None:
    """The checkpoint a resume continues from (None for a fresh run), and this sitting recorded
    in the run's provenance."""
    checkpoint = latest_sac_checkpoint(args.run_path) if args.resume else None
    record_session(args.run_path, checkpoint.step if checkpoint is not None else 0)
    return checkpoint


def record_session(run_dir: Path, from_step: int) -> None:
    """Appends this sitting to provenance.json: the code (git commit) that trained from which
    step, so a results table can say what each run was measured with."""
    path = run_dir / "provenance.json"
    provenance = json.loads(path.read_text()) if path.exists() else {"sessions": []}
    provenance["sessions"].append(
        {
            "commit": git_commit(),
            "from_step": from_step,
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "collection": "stochastic",  # training actions sampled (fixed in a2cca08)
            "torch": torch.__version__,
            "host_cpus": os.cpu_count(),
        }
    )
    write_json(path, provenance)


def git_commit() -> str:
    """HEAD of the repository this code runs from ("unknown" outside a git checkout), with
    "+dirty" when tracked files differ from it."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(repo), "diff", "--quiet", "HEAD", "--", "agents", "sd2ail_reward"],
            timeout=10,
        ).returncode  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


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
