"""Figures of training runs: `sd2ail-reward plot RUN_DIR [RUN_DIR ...]`.

- `curves.png`: the true evaluation return of every run against env steps, on one figure, with
  each run's expert return (from its demo store) as a dashed line.
- `pca.png` (the paper's Fig. 4): expert vs pseudo-expert samples of the first run's latest
  server checkpoint, projected on the two principal components of the expert rows, in the
  discriminator's normalised [action, obs] space, with the agent's latest pairs beside them.
- `quality.json`: the Frechet distance to the expert's pairs, in that space, of the latest
  pseudo-experts, of the agent's latest pairs and of its random warm-up pairs (the paper's
  "random" reference: 85.4 for pseudo-experts vs 304.7 for random on Hopper); and the Pearson
  correlation of the learned with the env's reward over the run's training transitions (SAC's
  last checkpoint), both scored by the final D: the latest 5,000 (what `metrics.csv` logs)
  and 20,000 spread over the whole run.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import matplotlib
import numpy as np
import tyro

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from sd2ail_reward.checkpoint import CheckpointError, CheckpointStore
from sd2ail_reward.flags import parse
from sd2ail_reward.metrics import episode_sums, frechet_distance, pearson

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class PlotArgs:
    """Flags of `sd2ail-reward plot`, one per field."""

    run_dirs: Annotated[
        tuple[Path, ...],
        tyro.conf.Positional,
        tyro.conf.arg(metavar="RUN_DIR [RUN_DIR ...]", help_behavior_hint="(required)"),
    ]
    """Run directories of `train`."""
    out: Path = Path(".")
    """Output directory."""


def parse_args(argv: Sequence[str] | None = None) -> PlotArgs:
    """The flags; no RUN_DIR is a usage error (exit 2), as tyro has no one-or-more."""
    prog = "sd2ail-reward plot"
    args = parse(PlotArgs, argv, prog=prog, description=__doc__.split("\n\n")[0])
    if not args.run_dirs:
        print(f"usage: {prog} RUN_DIR [RUN_DIR ...] [--out DIR]", file=sys.stderr)
        print(f"{prog}: error: give at least one RUN_DIR", file=sys.stderr)
        raise SystemExit(2)
    return args


def read_curve(run_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    if not rows:
        raise SystemExit(f"{run_dir}: metrics.csv has no evaluations yet")
    return (
        np.array([int(r["env_step"]) for r in rows]),
        np.array([float(r["eval_return_mean"]) for r in rows]),
        np.array([float(r["eval_return_std"]) for r in rows]),
    )


def run_label(run_dir: Path) -> tuple[str, float | None]:
    """'algo, recipe env seed' (what the reward was, where it was not the learned one; the SAC
    recipe) and the expert return recorded in the run's summary, if any."""
    config = json.loads((run_dir / "config.json").read_text())
    reward = config.get("reward") or ("frozen" if config.get("frozen_discriminator") else "")
    algo = {"env": "SAC, true reward", "frozen": f"{config.get('algo', '?')}, frozen D"}.get(
        reward, config.get("algo", "?")
    )
    recipe = config.get("sac_recipe")
    recipe_part = f", {recipe} recipe" if recipe else ""
    label = f"{algo}{recipe_part} {config.get('env', '')} s{config.get('seed', '')}"
    summary = run_dir / "summary.json"
    expert = json.loads(summary.read_text()).get("expert_return") if summary.exists() else None
    return label, expert


def plot_curves(run_dirs: Sequence[Path], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    experts: set[float] = set()
    for run_dir in run_dirs:
        steps, mean, std = read_curve(run_dir)
        label, expert = run_label(run_dir)
        (line,) = ax.plot(steps, mean, label=label)
        ax.fill_between(steps, mean - std, mean + std, alpha=0.15, color=line.get_color())
        if expert is not None and np.isfinite(expert) and expert not in experts:
            experts.add(expert)
            ax.axhline(expert, ls="--", color="k", lw=1, label=f"expert ({expert:.0f})")
    save_figure(fig, ax, out, "env steps", "true evaluation return")


def save_figure(fig: Figure, ax: Axes, out: Path, xlabel: str, ylabel: str) -> None:
    """Label, add the legend, write `out` and free the figure (shared by both plots)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


@dataclass(frozen=True)
class ServerRows:
    """Pairs of a server checkpoint, in the discriminator's normalised [action, obs] space."""

    expert: np.ndarray
    pseudo: np.ndarray
    """The latest pseudo-experts (oldest first; empty without generation)."""
    agent_latest: np.ndarray
    agent_warmup: np.ndarray
    """The agent's first pairs, its random warm-up; empty once the buffer has wrapped."""


def latest_of_ring(rows: np.ndarray, size: int, next_slot: int, n: int) -> np.ndarray:
    """The `n` most recently written of a ring buffer's `size` rows, oldest first."""
    n = min(n, size)
    capacity = max(rows.shape[0], 1)
    return rows[(next_slot - n + np.arange(n)) % capacity]


def server_rows(run_dir: Path, n: int = 5000, warmup: int = 1000) -> ServerRows:
    """The rows of the run's latest good server checkpoint: all expert pairs, the latest `n`
    pseudo-experts and agent pairs, and the agent's first `warmup` pairs."""
    state = CheckpointStore(run_dir / "server").load_latest().state
    replay, agent = state["replay"], state["agent"]
    n_traj = int(replay["n_trajectories"])
    expert = np.concatenate(
        [
            np.asarray(replay[f"expert.{i}.x"])[: int(replay[f"expert.{i}.size"])]
            for i in range(n_traj)
        ]
    )
    pseudo_x = np.asarray(replay["pseudo.x"])
    pseudo = latest_of_ring(pseudo_x, int(replay["pseudo.size"]), int(replay["pseudo.ptr"]), n)
    agent_x, agent_size = np.asarray(agent["rows"]), int(agent["size"])
    wrapped = int(agent["total_added"]) > agent_size
    return ServerRows(
        expert=expert,
        pseudo=pseudo,
        agent_latest=latest_of_ring(agent_x, agent_size, int(agent["next"]), n),
        agent_warmup=agent_x[: 0 if wrapped else min(warmup, agent_size)],
    )


def reward_quality(rows: ServerRows) -> dict[str, float]:
    """Frechet distance to the expert's pairs of each other set (NaN for an empty one)."""
    return {
        "frechet_pseudo": frechet_distance(rows.pseudo, rows.expert),
        "frechet_agent_latest": frechet_distance(rows.agent_latest, rows.expert),
        "frechet_random_warmup": frechet_distance(rows.agent_warmup, rows.expert),
        "pseudo_rows": float(rows.pseudo.shape[0]),
        "agent_latest_rows": float(rows.agent_latest.shape[0]),
        "random_warmup_rows": float(rows.agent_warmup.shape[0]),
    }


def warmup_steps(run_dir: Path) -> int:
    """The run's random warm-up steps (`train`'s --start-steps), from its config."""
    config_path = run_dir / "config.json"
    if not config_path.exists():
        return 1000
    return int(json.loads(config_path.read_text()).get("start_steps", 1000))


def write_quality(run_dir: Path, out: Path) -> dict[str, float] | None:
    """`quality.json` of the run's latest server checkpoint; None when there is none."""
    try:
        rows = server_rows(run_dir, warmup=warmup_steps(run_dir))
    except (CheckpointError, FileNotFoundError, KeyError) as err:
        print(f"no reward quality: {err}")
        return None
    quality = reward_quality(rows)
    try:
        quality.update(reward_correlations(run_dir))
    except (CheckpointError, FileNotFoundError, KeyError, ValueError) as err:
        print(f"no reward correlations: {err}")
    out.write_text(json.dumps(quality, indent=2) + "\n")
    return quality


def reward_correlations(run_dir: Path, n: int = 5000, whole: int = 20_000) -> dict[str, float]:
    """Pearson correlations of learned and env rewards over the run's replay buffer (SAC's
    latest checkpoint) scored by the discriminator of the server's latest checkpoint.

    Late in a run the agent's transitions are much alike, so the latest ones correlate less
    than the whole run's, which span the warm-up, falls and the learned gait: both are given.
    Neither reference codebase computes the paper's correlation (Hopper 0.90), nor does the
    paper say whether it is of rewards or of returns, so the correlation of the episodes'
    learned and true returns over the run is given too: on a task where falling ends the
    episode both grow with its length, so it runs higher than the per-transition one. Their
    correlation per step (each episode's return over its length) leaves the length out."""
    from sd2ail_reward.config import from_dict
    from sd2ail_reward.demos import read_demos
    from sd2ail_reward.learner import RewardLearner

    buffer = CheckpointStore(run_dir / "checkpoints").load_latest().state["buffer"]
    size = int(buffer["size"])
    if size < 2 or int(buffer["insertion_idx"]) != size % int(buffer["maxsize"]):
        raise KeyError("a replay buffer that has wrapped (its order is lost)")
    obs, act = np.asarray(buffer["data/obs"]), np.asarray(buffer["data/act"])
    obs_next = np.asarray(buffer["data/obs_next"])
    env_reward = np.asarray(buffer["data/info/env_reward"], np.float64)
    state = CheckpointStore(run_dir / "server").load_latest().state
    config = json.loads((run_dir / "config.json").read_text())
    demos = read_demos(
        REPO / config["demos"] if not Path(config["demos"]).is_absolute() else config["demos"],
        num_episodes=config.get("num_demos"),
        episodes=config.get("demo_episodes"),
        expected_env_id=config["env"],
    ).subsampled(int(config.get("demo_subsample", 1)))
    learner = RewardLearner(from_dict(json.loads(state["config"])), demos)
    learner.load_state_dict(state)
    low = np.asarray(state["normalizer"]["act_low"], np.float64)
    high = np.asarray(state["normalizer"]["act_high"], np.float64)

    rewards = []  # the final D's reward of every transition, in blocks
    for block in np.array_split(np.arange(size), max(1, size // 2048)):
        env_act = low + (np.asarray(act[block], np.float64) + 1.0) * 0.5 * (high - low)
        rewards.append(learner.reward(obs[block], env_act.astype(np.float32), obs_next[block]))
    learned_reward = np.concatenate(rewards).astype(np.float64)
    latest = np.arange(max(0, size - n), size)
    spread = np.unique(np.linspace(0, size - 1, min(whole, size)).astype(np.int64))
    done = np.asarray(buffer["data/done"], bool)[:size]
    learned_returns, true_returns = (
        episode_sums(learned_reward, done),
        episode_sums(env_reward, done),
    )
    lengths = episode_sums(np.ones(size), done)
    return {
        "reward_corr_latest": pearson(learned_reward[latest], env_reward[latest]),
        "reward_corr_whole_run": pearson(learned_reward[spread], env_reward[spread]),
        "reward_corr_episode_returns": pearson(learned_returns, true_returns),
        "reward_corr_episode_means": pearson(learned_returns / lengths, true_returns / lengths),
        "episodes": float(len(learned_returns)),
        "transitions": float(size),
    }


def plot_pca(run_dir: Path, out: Path, max_points: int = 3000, seed: int = 0) -> bool:
    try:
        rows = server_rows(run_dir, n=max_points)
    except (CheckpointError, FileNotFoundError, KeyError) as err:
        print(f"no PCA figure: {err}")
        return False
    if rows.pseudo.shape[0] == 0:
        print("no PCA figure: the pseudo-expert buffer is empty")
        return False
    expert = rows.expert
    mean = expert.mean(axis=0)
    _, _, vt = np.linalg.svd(expert - mean, full_matrices=False)
    basis = vt[:2].T
    fig, ax = plt.subplots(figsize=(5, 5))
    a = (rows.agent_latest - mean) @ basis
    p = (rows.pseudo - mean) @ basis
    e = (expert - mean) @ basis
    ax.scatter(a[:, 0], a[:, 1], s=3, alpha=0.15, color="0.6", label=f"agent, latest ({len(a)})")
    ax.scatter(p[:, 0], p[:, 1], s=3, alpha=0.3, label=f"pseudo-expert, latest ({len(p)})")
    ax.scatter(e[:, 0], e[:, 1], s=3, alpha=0.6, label=f"expert ({len(e)})")
    save_figure(fig, ax, out, "PC 1 (expert)", "PC 2 (expert)")
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    plot_curves(args.run_dirs, args.out / "curves.png")
    print(f"wrote {args.out / 'curves.png'}")
    if plot_pca(args.run_dirs[0], args.out / "pca.png"):
        print(f"wrote {args.out / 'pca.png'}")
    quality = write_quality(args.run_dirs[0], args.out / "quality.json")
    if quality is not None:
        print(f"wrote {args.out / 'quality.json'}: {quality}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
