"""Behaviour cloning from ONE Hopper demonstration: the baseline SD2AIL has to beat.

Runs `sd2ail-reward train --algo bc` (the same actor network as SAC's, its squashed mean
regressed onto the demo actions, no server, no env reward) for several seeds, with the
evaluations of `train` (deterministic, 10 episodes, true return, with termination) every
`--bc-epochs / 10` epochs:

    python benchmarks/hopper_bc.py [--seeds 0 1 2] [--epochs 200] [--num-demos 1]

Writes `benchmarks/results/hopper_bc_<N>demo.csv` (one row per seed and evaluation) and a
PNG of the curves against the expert's return. Run directories go to `--runs` (outside the
repository by default).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agents.recipes import TrainArgs  # noqa: E402
from agents.train import train  # noqa: E402
from sd2ail_reward.demos import read_demos  # noqa: E402

FIELDS = ("seed", "epoch", "eval_return_mean", "eval_return_std", "eval_x_travelled")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--num-demos", type=int, default=1)
    parser.add_argument("--demos", default=str(REPO / "demos" / "Hopper-v5.zarr"))
    parser.add_argument("--runs", type=Path, default=Path(tempfile.gettempdir()) / "hopper-bc")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ns = parser.parse_args()

    rows: list[dict[str, float]] = []
    for seed in ns.seeds:
        run_dir = ns.runs / f"bc-{ns.num_demos}demo-seed{seed}"
        if (run_dir / "metrics.csv").exists():
            (run_dir / "metrics.csv").unlink()  # a rerun starts its curve afresh
        train(
            TrainArgs(
                env="Hopper-v5",
                demos=ns.demos,
                num_demos=ns.num_demos,
                algo="bc",
                seed=seed,
                bc_epochs=ns.epochs,
                run_dir=str(run_dir),
                progress=False,
            )
        )
        for r in csv.DictReader((run_dir / "metrics.csv").open()):
            rows.append({"seed": seed, "epoch": int(r["env_step"])} | {
                k: float(r[k]) for k in FIELDS[2:]
            })  # fmt: skip

    stem = ns.out / f"hopper_bc_{ns.num_demos}demo"
    ns.out.mkdir(parents=True, exist_ok=True)
    with stem.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    expert = float(read_demos(ns.demos).episode_returns.mean())
    plot(rows, expert, stem.with_suffix(".png"), ns.num_demos)
    for seed in ns.seeds:
        mine = [r for r in rows if r["seed"] == seed]
        best = max(mine, key=lambda r: r["eval_return_mean"])
        print(
            f"seed {seed}: best {best['eval_return_mean']:.0f} at epoch {best['epoch']:.0f} "
            f"({best['eval_x_travelled']:.1f} m), final {mine[-1]['eval_return_mean']:.0f}"
        )
    return 0


def plot(rows: list[dict[str, float]], expert: float, path: Path, num_demos: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for seed in sorted({int(r["seed"]) for r in rows}):
        mine = [r for r in rows if r["seed"] == seed]
        ax.plot([r["epoch"] for r in mine], [r["eval_return_mean"] for r in mine], "o-",
                label=f"BC seed {seed}")  # fmt: skip
    ax.axhline(expert, color="k", ls="--", label=f"expert demos ({expert:.0f})")
    ax.set_xlabel("epochs over the demo")
    ax.set_ylabel("evaluation return (10 episodes)")
    ax.set_title(f"Behaviour cloning on Hopper-v5 from {num_demos} demo(s)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
