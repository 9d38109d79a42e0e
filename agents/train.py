"""`sd2ail-reward train`: SAC (Tianshou 2.0.1) through the one training loop (`agents.loop`).

    sd2ail-reward train --env Hopper-v5 --demos demos/Hopper-v5.zarr --num-demos 1 \\
        --algo sd2ail --steps 200000 --seed 0          # imitation: SAC never sees the env's reward
    sd2ail-reward train --reward env --sac-recipe expert --env Walker2d-v5 --demos ''
                                                       # an expert on the true reward
    sd2ail-reward train --resume --run-dir RUN_DIR [--steps N]

`--reward` says what SAC learns from: `learned` (the reward server's, trained on the pushed
transitions), `frozen` (its discriminator never trained: a control) or `env` (the env's own
reward, no server: experts and the true-reward control, the ceiling SAC reaches with a recipe).
Everything else (recipe, collection, evaluation, logging, checkpoints) is the same loop.

- With no `--server`, a local reward server is started (`sd2ail_reward.spawn.LocalServer`:
  127.0.0.1, a free port, the run's write token, its own session) and stopped at the end;
  its checkpoints go to RUN_DIR/server, paired with SAC's.
- The training env is wrapped with `SD2AILRewardWrapper`, which pushes every transition; the
  server trains one discriminator update per transition after the warm-up (`--min-agent-size
  <start steps>`), while SAC runs one update per env step of the chunk, then `Sync`.
- Sampled batches are relabelled with the current discriminator (`RelabelingSAC`);
  `--no-relabel` uses the wrapper's step-time reward instead.
- Training actions are sampled from SAC's policy; evaluation envs are NOT wrapped: every
  `--eval-every` steps, `--eval-episodes` deterministic episodes report the TRUE return.
- SIGINT/SIGTERM (to train alone or its whole process group) checkpoint both sides and exit 0.

Run directory: config.json, provenance.json (commit per sitting), metrics.csv, timings.json
(seconds per part of the loop), summary.json, TensorBoard events (tb/), learning_curve.png,
actor_spec.json + actor.pt / best_actor.pt (recordable with `sd2ail-reward demos record`),
checkpoints/ (SAC + replay buffer), server/ (the reward server's checkpoints), token.
"""

from __future__ import annotations

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
from agents.local_server import split_cores, start_local_server
from agents.loop import train_sac
from agents.recipes import TrainArgs, parse_train_args, policy_sees_normalized_obs
from agents.run_files import write_json
from sd2ail_reward.checkpoint import Checkpoint, CheckpointError
from sd2ail_reward.client import RewardClient
from sd2ail_reward.demos import read_demos
from sd2ail_reward.serve_cli import pin_to_cores

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
    torch.set_num_threads(args.sac_threads)
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
    server_cores = pin_train_to_one_core() if args.pin_cores and not args.server else []
    server = None if args.server else start_local_server(args, run_dir, str(paired), server_cores)
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
    """The stored config of the run in --run-dir, with the flags a resume may change: the
    budget, and a --target-return (and --target-full-episodes) given again (an expert whose
    recorded demos fell short of what its evaluation promised trains on to a higher one)."""
    saved = json.loads((args.run_path / "config.json").read_text())
    saved.update(steps=args.steps, resume=True, progress=args.progress, run_dir=args.run_dir)
    if args.target_return is not None:
        saved["target_return"] = args.target_return
    if args.target_full_episodes:
        saved["target_full_episodes"] = True
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


def pin_train_to_one_core() -> list[int]:
    """`--pin-cores`: this process onto its first allowed core; the other cores, for the
    server. Called before the loop starts its threads (prefetch, logging), which inherit it."""
    train_core, server_cores = split_cores(sorted(os.sched_getaffinity(0)))
    pin_to_cores([train_core])
    log.info("pinned train to core %d, the reward server to %s", train_core, server_cores)
    return server_cores


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_train_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(1)
    try:
        train(args)
    except RunDirInUse as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
