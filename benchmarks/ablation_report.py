"""Does SD2AIL beat its ablations and baselines? Per-algorithm statistics of a grid's runs.

    python benchmarks/ablation_report.py --grids pendulum-ablation --name pendulum --threshold -300
    python benchmarks/ablation_report.py --grids hopper-expert-recipe hopper-evidence \
        hopper-recipe-check hopper-ablation --name hopper --threshold 2500

Reads the archived runs (`benchmarks/results/runs/<run>/metrics.csv`, see runs_csv.py) of
the grids and reports, per algorithm (and demo protocol) over its seeds: the mean and 95%
bootstrap interval of the best and final true return, of the reward quality at the end
(learned vs true reward correlation, the pseudo-experts' Frechet distance to the expert), of
the normalised area under the learning curve and of the first env step whose evaluation
reaches `--threshold` (runs that never reach it count as the budget, and the number that did
is given), and the probability that an SD2AIL run beats a run of each other algorithm under
the same demo protocol (rliable's probability of improvement, with its interval), on the AUC
and on the final return (the one that BC, whose curve is over epochs, has too). Only
finished runs count (a partial run's curve is shorter). Writes
`benchmarks/results/ablation_<name>.csv` and `.png` (mean curve with its 95% band per
algorithm) and prints the markdown table (`--readme`: also into benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agents.stats import (  # noqa: E402
    bootstrap_ci,
    first_step_reaching,
    normalized_auc,
    probability_of_improvement_ci,
)
from benchmarks.grid import GRIDS  # noqa: E402
from benchmarks.runs_csv import ARCHIVE, RUNS_CSV, recipe_label, replace_between  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def group_of(run: str, algo: str) -> str:
    """The algorithm, with the demo protocol when the demos were subsampled and the SAC recipe
    when it is not the reference's; SAC on the env's own reward (a control) per recipe."""
    config = json.loads((ARCHIVE / run / "config.json").read_text())
    if config.get("reward") == "env":  # the recipe's name and any setting changed from it
        return f"sac on the true reward ({recipe_label(config)} recipe)"
    every = int(config.get("demo_subsample", 1))
    recipe = config.get("sac_recipe", "reference")
    parts = [f"every {every}th pair"] if every != 1 else []
    parts += [] if recipe == "reference" else [f"{recipe} recipe"]
    return algo + (f" ({', '.join(parts)})" if parts else "")


def protocol_of(group: str) -> str:
    """The demo protocol in a `group_of` name ('' for whole trajectories)."""
    found = re.search(r"every \d+th pair", group)
    return found.group(0) if found else ""


def sd2ail_reference(group: str, runs_per_group: dict[str, int]) -> str | None:
    """The SD2AIL group another is compared with: SD2AIL under the same demo protocol and SAC
    recipe; for BC, which has no SAC, the SD2AIL group of its protocol with the most runs
    (the recipe `make run` uses, where the grid ran it on most seeds)."""
    if group.startswith("sd2ail") or group.startswith("sac on the true reward"):
        return None
    if not group.startswith("bc"):
        reference = "sd2ail" + group[len(group.split(" ")[0]) :]
        return reference if reference in runs_per_group else None
    same_protocol = [
        g for g in runs_per_group if g.startswith("sd2ail") and protocol_of(g) == protocol_of(group)
    ]
    return max(same_protocol, key=lambda g: runs_per_group[g], default=None)


Curves = dict[str, list[tuple[np.ndarray, np.ndarray, int]]]
Quality = dict[str, list[tuple[float, ...]]]
QUALITY_KEYS = (
    "corr", "frechet", "agent_frechet", "random_frechet", "corr_whole", "corr_returns",
    "corr_means",
)  # fmt: skip
"""The summary's names of `load_runs`' quality columns, in their order."""


def load_runs(grids: list[str]) -> tuple[Curves, Quality]:
    """algo -> [(steps, returns, budget)] of the grids' finished runs, and algo -> [(Pearson
    correlation of the learned with the true reward over the latest transitions (metrics), the
    whole run, its episodes' returns and their returns per step (`quality.json`), and the
    Frechet distances to the expert of
    the pseudo-experts, the agent's latest pairs and its random warm-up pairs)] at each run's
    end (NaN where a run has none). The distances come from the run's `quality.json` (its
    last server checkpoint); without one, the pseudo-experts' from its last metrics row."""
    names = {run.name for grid in grids for run in GRIDS[grid]()}
    finished = {
        row["run"]: row
        for row in csv.DictReader(RUNS_CSV.open())
        if row["run"] in names and row["status"] == "finished"
    }
    curves: Curves = {}
    quality: Quality = {}
    for name, row in sorted(finished.items()):
        rows = list(csv.DictReader((ARCHIVE / name / "metrics.csv").open()))
        steps = np.array([float(r["env_step"]) for r in rows])
        returns = np.array([float(r["eval_return_mean"]) for r in rows])
        group = group_of(name, row["algo"])
        curves.setdefault(group, []).append((steps, returns, int(row["budget"])))
        last = rows[-1]
        measured = ARCHIVE / name / "quality.json"
        end = json.loads(measured.read_text()) if measured.exists() else {}
        quality.setdefault(group, []).append(
            (
                float(last.get("reward_env_corr") or "nan"),
                float(end.get("frechet_pseudo", last.get("pseudo_frechet") or "nan")),
                float(end.get("frechet_agent_latest", "nan")),
                float(end.get("frechet_random_warmup", "nan")),
                float(end.get("reward_corr_whole_run", "nan")),
                float(end.get("reward_corr_episode_returns", "nan")),
                float(end.get("reward_corr_episode_means", "nan")),
            )
        )
    return curves, quality


def summarise(
    curves: Curves, quality: Quality, threshold: float, seed: int
) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    auc = {
        algo: [normalized_auc(s, r) for s, r, _ in runs]
        for algo, runs in curves.items()
        if not algo.startswith("bc")  # BC's x axis is epochs, not env steps
    }
    finals = {algo: [float(r[-1]) for _, r, _ in runs] for algo, runs in curves.items()}
    runs_per_group = {algo: len(runs) for algo, runs in curves.items()}
    out: list[dict[str, object]] = []
    for algo, runs in curves.items():
        row: dict[str, object] = {"algo": algo, "runs": len(runs)}
        best = [float(r.max()) for _, r, _ in runs]
        for key, values in (("best", best), ("final", finals[algo])):
            mean, lower, upper = bootstrap_ci(values, rng)
            row.update({key: mean, f"{key}_lo": lower, f"{key}_hi": upper})
        for index, key in enumerate(QUALITY_KEYS):
            measured = [q[index] for q in quality.get(algo, []) if np.isfinite(q[index])]
            if measured:
                mean, lower, upper = bootstrap_ci(measured, rng)
                row.update({key: mean, f"{key}_lo": lower, f"{key}_hi": upper})
        if algo in auc:
            mean, lower, upper = bootstrap_ci(auc[algo], rng)
            row.update(auc=mean, auc_lo=lower, auc_hi=upper)
            reach = [first_step_reaching(s, r, threshold) for s, r, _ in runs]
            row["reached"] = sum(np.isfinite(reach))
            capped = [min(step, budget) for step, (_, _, budget) in zip(reach, runs, strict=True)]
            mean, lower, upper = bootstrap_ci(capped, rng)
            row.update(first_step=mean, first_step_lo=lower, first_step_hi=upper)
        reference = sd2ail_reference(algo, runs_per_group)
        if reference is not None:
            if algo in auc:
                poi, lower, upper = probability_of_improvement_ci(auc[reference], auc[algo], rng)
                row.update(poi_sd2ail=poi, poi_sd2ail_lo=lower, poi_sd2ail_hi=upper)
            poi, lower, upper = probability_of_improvement_ci(finals[reference], finals[algo], rng)
            row.update(poi_final=poi, poi_final_lo=lower, poi_final_hi=upper)
            row["sd2ail_reference"] = reference
        out.append(row)
    return out


def interval(row: dict[str, object], key: str, fmt: str = "{:.0f}") -> str:
    if key not in row:
        return "-"
    mean, lower, upper = (float(str(row[k])) for k in (key, f"{key}_lo", f"{key}_hi"))
    return f"{fmt.format(mean)} [{fmt.format(lower)}, {fmt.format(upper)}]"


def markdown(rows: list[dict[str, object]], threshold: float) -> str:
    lines = [
        f"| algo | runs | best | final | AUC (mean return) | first step >= {threshold:g} "
        "(reached) | P(SD2AIL > algo): AUC | final | reward corr: latest | whole run "
        "| episode returns "
        "| episode returns per step "
        "| Frechet to the expert (end): pseudo-experts | agent | random warm-up |",
        "|---|---:|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        reached = f" ({row['reached']}/{row['runs']})" if "reached" in row else ""
        poi = f"{interval(row, 'poi_sd2ail', '{:.2f}')} | {interval(row, 'poi_final', '{:.2f}')}"
        lines.append(
            f"| {row['algo']} | {row['runs']} | {interval(row, 'best')} | "
            f"{interval(row, 'final')} | {interval(row, 'auc')} | "
            f"{interval(row, 'first_step')}{reached} | {poi} | "
            f"{interval(row, 'corr', '{:.2f}')} | {interval(row, 'corr_whole', '{:.2f}')} | "
            f"{interval(row, 'corr_returns', '{:.2f}')} | "
            f"{interval(row, 'corr_means', '{:.2f}')} | "
            f"{interval(row, 'frechet', '{:.1f}')} | "
            f"{interval(row, 'agent_frechet', '{:.1f}')} | "
            f"{interval(row, 'random_frechet', '{:.1f}')} |"
        )
    return "\n".join(lines)


def plot(curves: Curves, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for algo, runs in curves.items():
        if algo.startswith("bc"):
            continue
        length = min(len(s) for s, _, _ in runs)
        steps = runs[0][0][:length]
        stacked = np.stack([r[:length] for _, r, _ in runs])
        band = np.array([bootstrap_ci(stacked[:, i], rng, n_boot=2000) for i in range(length)])
        ax.plot(steps, band[:, 0], label=f"{algo} ({len(runs)} seeds)")
        ax.fill_between(steps, band[:, 1], band[:, 2], alpha=0.2)
    ax.set_xlabel("env steps")
    ax.set_ylabel("true evaluation return")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--grids", nargs="+", required=True, choices=sorted(GRIDS))
    parser.add_argument("--name", required=True, help="output name: results/ablation_<name>.*")
    parser.add_argument("--threshold", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument(
        "--readme",
        action="store_true",
        help="write the table into benchmarks/README.md (between its `ablation <name>` marks)",
    )
    args = parser.parse_args()
    curves, quality = load_runs(args.grids)
    if not curves:
        raise SystemExit(f"no finished runs of {args.grids} in {RUNS_CSV}")
    rows = summarise(curves, quality, args.threshold, args.seed)
    keys = sorted({k for row in rows for k in row}, key=lambda k: (k != "algo", k))
    with (RESULTS / f"ablation_{args.name}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    plot(curves, RESULTS / f"ablation_{args.name}.png", f"{args.name}: mean and 95% CI")
    table = markdown(rows, args.threshold)
    print(table)
    if args.readme:
        begin, end = f"<!-- ablation {args.name}:begin -->", f"<!-- ablation {args.name}:end -->"
        replace_between(REPO / "benchmarks" / "README.md", begin, end, table)


if __name__ == "__main__":
    main()
