"""The files of a run directory other than checkpoints: atomic JSON, metrics.csv (one row per
evaluation, truncated back to a resumed checkpoint) and summary.json."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tianshou.algorithm.modelfree.sac import SACTrainingStats

from agents.checkpoints import TrainState
from sd2ail_reward.checkpoint import fsync_path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; on success fsync it and os.replace it onto `path`."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_tensors(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


BC_METRICS = ("env_step", "eval_return_mean", "eval_return_std", "eval_x_travelled", "wall_time")


METRICS = (
    "env_step",
    "eval_return_mean",
    "eval_return_std",
    "eval_x_travelled",
    "wall_time",
    "steps_per_s",
    "reward_env_corr",
    "d_expert",
    "d_agent",
    "pseudo_threshold",
    "pseudo_acceptance",
    "pseudo_frechet",
    "disc_updates",
    "critic_q",
    "learned_return",
)


def append_metrics(path: Path, row: dict[str, float], fieldnames: Sequence[str] = METRICS) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def truncate_metrics(path: Path, max_step: int, fieldnames: Sequence[str] = METRICS) -> None:
    """Drop rows logged after the checkpoint a run resumes from (they will be logged again)."""
    if not path.exists():
        return
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["env_step"]) <= max_step]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)


def evaluation_returns(metrics_path: Path) -> list[float]:
    """Mean evaluation return of every row of a run's metrics.csv (none for a fresh run)."""
    rows = list(csv.DictReader(metrics_path.open())) if metrics_path.exists() else []
    return [float(row["eval_return_mean"]) for row in rows]


def last_evaluation_return(metrics_path: Path) -> float:
    returns = evaluation_returns(metrics_path)
    return returns[-1] if returns else float("nan")


def summarize(run_dir: Path, expert: float, state: TrainState) -> dict[str, float]:
    returns = evaluation_returns(run_dir / "metrics.csv")
    final = returns[-1] if returns else float("nan")
    best = max(returns, default=float("nan"))
    summary = {
        "env_steps": float(state.env_step),
        "best_return": best,
        # the evaluation best_actor.pt comes from (with --target-full-episodes: the best one
        # whose episodes all ran to the time limit); what --target-return is checked against
        "best_actor_return": float("nan") if state.best_return is None else state.best_return,
        "final_return": final,
        "expert_return": expert,
        # a fraction of the expert's return means something only for positive returns
        "best_fraction_of_expert": best / expert if expert > 0 else float("nan"),
        "final_fraction_of_expert": final / expert if expert > 0 else float("nan"),
    }
    write_json(run_dir / "summary.json", summary)
    print("\n" + "\n".join(f"{k:>26}  {v:12.3f}" for k, v in summary.items()), flush=True)
    return summary


def record_evaluation(
    run_dir: Path,
    writer: Any,
    state: TrainState,
    evaluation: tuple[np.ndarray, float],
    learner_stats: dict[str, float],
    sac_stats: SACTrainingStats | None,
    diagnostics: dict[str, float],
    elapsed: float,
    cloning_mse: float = float("nan"),
) -> None:
    """One metrics.csv row and its TensorBoard scalars, plus SAC's own state (entropy weight
    and losses), which tells a stalled policy apart from a stalled discriminator.
    `evaluation` is the episodes' true returns and their mean x distance travelled;
    `diagnostics` is `training_diagnostics`'s; `cloning_mse` is the actor's error on the demo
    actions under `--bc-weight` (nan without)."""
    returns, x_travelled = evaluation
    row = {
        "env_step": state.env_step,
        "eval_return_mean": float(returns.mean()),
        "eval_return_std": float(returns.std()),
        "eval_x_travelled": x_travelled,
        "wall_time": round(elapsed, 1),
        "steps_per_s": round(state.env_step / max(elapsed, 1e-9), 2),
        "reward_env_corr": diagnostics["reward_env_corr"],
        "d_expert": learner_stats.get("d_reward/expert", float("nan")),
        "d_agent": learner_stats.get("d_reward/agent", float("nan")),
        "pseudo_threshold": learner_stats.get("pseudo/threshold", float("nan")),
        "pseudo_acceptance": learner_stats.get("pseudo/acceptance_total", float("nan")),
        "pseudo_frechet": learner_stats.get("pseudo/frechet_to_expert", float("nan")),
        "disc_updates": learner_stats.get("updates", float("nan")),
        "critic_q": diagnostics["critic_q"],
        "learned_return": diagnostics["learned_return"],
    }
    append_metrics(run_dir / "metrics.csv", row, METRICS)
    for key, value in row.items():
        if key != "env_step":
            writer.add_scalar(f"train/{key}", value, state.env_step)
    if sac_stats is not None:
        for key in ("alpha", "actor_loss", "critic1_loss"):
            value = getattr(sac_stats, key)
            if value is not None:
                writer.add_scalar(f"sac/{key}", float(value), state.env_step)
    if not np.isnan(cloning_mse):
        writer.add_scalar("sac/cloning_mse", cloning_mse, state.env_step)
