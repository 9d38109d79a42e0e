"""`benchmarks/results/runs.csv`: one row per training run, from the runs' own files.

    python benchmarks/runs_csv.py                  # archive the grid's runs, rebuild runs.csv
    python benchmarks/runs_csv.py --readme         # ... and the tables of both READMEs

Two steps. First each run directory under the grid root (`benchmarks/grid.py`), and any given
with `--run-dir`, is archived into `benchmarks/results/runs/<run name>/` (config.json,
metrics.csv, summary.json, timings.json, provenance.json: a few KB, committed), so the evidence
outlives the machine the run trained on. Then runs.csv is rebuilt from the archive alone, so
anyone can rebuild it from a clone. A run still training (its last
evaluation so far) or one stopped short of its budget has status `partial`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.grid import ARCHIVE, GRID_ROOT, GRIDS, finished  # noqa: E402

RUNS_CSV = REPO / "benchmarks" / "results" / "runs.csv"
RUN_FILES = ("config.json", "metrics.csv", "summary.json", "timings.json", "provenance.json")
COLUMNS = (
    "run", "env", "num_demos", "demo_subsample", "algo", "reward", "recipe", "obs", "extra_terms",
    "disc_ratio", "seed", "env_steps", "budget", "status", "best_return", "final_return",
    "expert_return", "best_step", "wall_s", "collection", "commit",
)  # fmt: skip
GRID_RUNS = {run.name: run for make in GRIDS.values() for run in make()}
README_BEGIN, README_END = "<!-- runs.csv:begin -->", "<!-- runs.csv:end -->"
TASKS_BEGIN, TASKS_END = "<!-- tasks:begin -->", "<!-- tasks:end -->"
TASK_ORDER = ("Hopper-v5", "HalfCheetah-v5", "Walker2d-v5", "Ant-v5", "Pendulum-v1")


def archive(run_dir: Path) -> None:
    if not (run_dir / "metrics.csv").exists():
        return
    target = ARCHIVE / run_dir.name
    target.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:
        if (run_dir / name).exists():
            shutil.copyfile(run_dir / name, target / name)
        elif (target / name).exists():  # left by an earlier run of that name (restarted)
            (target / name).unlink()
    if run_dir.name.startswith("expert-") and (run_dir / "learning_curve.png").exists():
        shutil.copyfile(run_dir / "learning_curve.png", target / "learning_curve.png")
    if run_finished(run_dir):
        archive_pca(run_dir, target)


def run_finished(run_dir: Path) -> bool:
    """A grid run that reached its budget or target (`grid.finished`); False for any other."""
    run = GRID_RUNS.get(run_dir.name)
    return run is not None and run.run_dir == run_dir and finished(run)


def archive_pca(run_dir: Path, target: Path) -> None:
    """The paper's Fig. 4 for a finished run with pseudo-experts: expert vs pseudo-expert
    samples of its last server checkpoint (drawn once; runs without pseudo-experts get none),
    and for every finished run with a learned reward `quality.json`: the Frechet distances to
    the expert of its pseudo-experts, its latest pairs and its random warm-up pairs."""
    from agents.plot import plot_pca, write_quality

    figure = target / "pca.png"
    config = json.loads((run_dir / "config.json").read_text())
    learned = config.get("reward") in (None, "learned") and config.get("algo") != "bc"
    generates = learned and config.get("algo") in ("sd2ail", "pseudo_only")
    has_server = (run_dir / "server").is_dir()
    if generates and has_server and not figure.exists():
        plot_pca(run_dir, figure)
    if learned and has_server and not (target / "quality.json").exists():
        write_quality(run_dir, target / "quality.json")


def budgets() -> dict[str, int]:
    """Each grid run's intended env steps (a run's config holds only the steps of its last
    sitting)."""
    return {name: run.steps for name, run in GRID_RUNS.items()}


def disc_ratio(config: dict[str, Any]) -> str:
    if config.get("reward") == "env" or config.get("algo") == "bc":
        return ""
    for arg in config.get("server_args") or ():
        if arg.startswith("--updates-per-transition="):
            return arg.split("=", 1)[1]
    return "1.0"  # the server's default, the paper's 1 discriminator update per env step


def extra_terms(config: dict[str, Any]) -> str:
    """What the run adds to the paper's algorithm (none for the paper's recipe)."""
    terms = [
        f"{key}={config[key]}"
        for key in ("bc_init_epochs", "bc_weight", "actor_hold_updates")
        if config.get(key)
    ]
    if config.get("critic_layer_norm"):
        terms.append("critic_layer_norm")
    server_args = config.get("server_args") or ()
    if "--compute-dtype=bfloat16" in server_args:
        terms.append("server bf16")  # not the paper's arithmetic: a configuration of its own
    if config.get("sac_dtype") == "bfloat16":
        terms.append("SAC bf16")
    for flag, term in (
        ("--normalize-obs", "disc obs normalised"),
        ("--no-normalize-obs", "disc obs raw"),
    ):
        if flag in server_args:
            terms.append(term)  # the preset's choice overridden
    return ";".join(terms) or "none"


def recipe_label(config: dict[str, Any]) -> str:
    """The SAC recipe, with each of its settings the run changed (and a non-default chunk), so
    that runs differing in them are not counted as seeds of one configuration."""
    from agents.recipes import RECIPE_FIELDS, SAC_RECIPES, TrainArgs

    name = config.get("sac_recipe", "reference")
    recipe = SAC_RECIPES[name]
    changed = [
        f"{key} {config[key]}"
        for key in RECIPE_FIELDS
        if key in config and config[key] != getattr(recipe, key)
    ]
    if config.get("chunk", TrainArgs.chunk) != TrainArgs.chunk:
        changed.append(f"chunk {config['chunk']}")
    if config.get("sac_init", TrainArgs.sac_init) != TrainArgs.sac_init:
        changed.append(f"{config['sac_init']} init")
    if config.get("policy_reg", 0.0):
        changed.append(f"policy_reg {config['policy_reg']:g}")
    return ", ".join([name, *changed])


def expert_return(config: dict[str, Any], summary: dict[str, Any]) -> float:
    """The demos' mean return (NaN for a run without demos: an expert trained from scratch)."""
    if "expert_return" in summary:
        return float(summary["expert_return"])
    if not config.get("demos"):
        return math.nan
    from sd2ail_reward.demos import read_demos

    demos = read_demos(
        REPO / config["demos"],
        num_episodes=config.get("num_demos"),
        episodes=config.get("demo_episodes"),
    )
    return float(demos.episode_returns.mean())


def row_of(run: Path, budget: dict[str, int]) -> dict[str, Any]:
    config = json.loads((run / "config.json").read_text())
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    summary_path = run / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    provenance_path = run / "provenance.json"
    sessions = (
        json.loads(provenance_path.read_text())["sessions"] if provenance_path.exists() else []
    )
    returns = [float(r["eval_return_mean"]) for r in rows]
    best = max(range(len(returns)), key=lambda i: returns[i])
    steps = int(rows[-1]["env_step"])
    target = budget.get(run.name, int(config["steps"]))
    bc = config.get("algo") == "bc" and config.get("reward") != "env"
    grid_run = GRID_RUNS.get(run.name)
    target_return = grid_run.target if grid_run is not None else None
    reached = target_return is not None and max(returns) >= target_return
    status = "finished" if steps >= target or reached or (bc and summary) else "partial"
    return {
        "run": run.name,
        "env": config["env"],
        "num_demos": len(config["demo_episodes"])
        if config.get("demo_episodes")
        else config["num_demos"],
        "demo_subsample": int(config.get("demo_subsample", 1)),
        "algo": "sac" if config.get("reward") == "env" else config["algo"],
        "reward": config.get("reward", "learned"),
        "recipe": recipe_label(config),
        "obs": "demo-normalised" if config.get("normalize_obs") else "raw",
        "extra_terms": extra_terms(config),
        "disc_ratio": disc_ratio(config),
        "seed": config["seed"],
        "env_steps": steps,
        "budget": target,
        "status": status,
        "best_return": round(returns[best], 1),
        "final_return": round(returns[-1], 1),
        "expert_return": round(expert_return(config, summary), 1),
        "best_step": int(rows[best]["env_step"]),
        "wall_s": round(float(rows[-1].get("wall_time") or math.nan), 0),
        "collection": sessions[0]["collection"] if sessions else "deterministic",
        "commit": sessions[0]["commit"] if sessions else "",
    }


def build() -> list[dict[str, Any]]:
    budget = budgets()
    runs = sorted(p for p in ARCHIVE.iterdir() if (p / "metrics.csv").exists())
    out = [row_of(run, budget) for run in runs]
    RUNS_CSV.parent.mkdir(parents=True, exist_ok=True)
    with RUNS_CSV.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(out)
    return out


def group_key(row: dict[str, Any]) -> tuple[Any, ...]:
    keys = ("env", "algo", "reward", "recipe", "obs", "extra_terms", "disc_ratio", "num_demos")
    return (*(row[k] for k in keys), row["demo_subsample"], row["budget"])


def demos_label(row: dict[str, Any]) -> str:
    if row["reward"] == "env":
        return "-"
    every = int(row["demo_subsample"])
    return f"{row['num_demos']}" + ("" if every == 1 else f", every {every}th pair")


def expert_label(row: dict[str, Any]) -> str:
    """The demos' mean return; '-' for a run without demos (an expert trained from scratch)."""
    value = float(row["expert_return"])
    return "-" if math.isnan(value) else f"{value:.0f}"


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    """The README's table: one line per configuration, its seeds side by side."""
    lines = [
        "| env | algo | reward | recipe (SAC obs) | extra terms | disc:SAC | demos "
        "| seeds done / run | env steps (budget) | best per seed | final per seed | expert |",
        "|---|---|---|---|---|---|---|---|---|---|---|---:|",
    ]
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(group_key(row), []).append(row)
    for runs in groups.values():
        r = runs[0]
        done = sum(run["status"] == "finished" for run in runs)
        steps = ", ".join(f"{run['env_steps'] // 1000}k" for run in runs)
        best = ", ".join(f"{run['best_return']:.0f}" for run in runs)
        final = ", ".join(f"{run['final_return']:.0f}" for run in runs)
        lines.append(
            f"| {r['env']} | {r['algo']} | {r['reward']} | {r['recipe']} ({r['obs']}) "
            f"| {r['extra_terms']} | {r['disc_ratio'] or '-'} | {demos_label(r)} "
            f"| {done} / {len(runs)} "
            f"| {steps} ({r['budget'] // 1000}k) | {best} | {final} | {expert_label(r)} |"
        )
    return "\n".join(lines)


def runs_markdown(rows: list[dict[str, Any]], env: str) -> str:
    """benchmarks/README.md's table of one env: one line per run."""
    lines = [
        "| run | algo | reward | recipe (SAC obs) | extra terms | disc:SAC | demos | seed "
        "| env steps | status | best (step) | final | expert | wall h | commit |",
        "|---|---|---|---|---|---|---|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if r["env"] != env:
            continue
        lines.append(
            f"| {r['run']} | {r['algo']} | {r['reward']} | {r['recipe']} ({r['obs']}) "
            f"| {r['extra_terms']} "
            f"| {r['disc_ratio'] or '-'} | {demos_label(r)} | {r['seed']} "
            f"| {r['env_steps']:,} / {r['budget']:,} | {r['status']} "
            f"| {r['best_return']:.0f} ({r['best_step']:,}) | {r['final_return']:.0f} "
            f"| {expert_label(r)} | {r['wall_s'] / 3600:.1f} | {r['commit']} |"
        )
    return "\n".join(lines)


def store_megabytes(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def tasks_markdown(rows: list[dict[str, Any]]) -> str:
    """The README's task table: each task's demo store (from demos/) and its runs so far."""
    from sd2ail_reward.demo_replay import Recording
    from sd2ail_reward.demos import read_demos

    lines = [
        "| task | demo store | expert return (mean +- std of its episodes) | expert trained "
        "| imitation runs finished / started | best SD2AIL return from 1 demo (seeds) |",
        "|---|---|---|---|---|---|",
    ]
    for env in TASK_ORDER:
        store = REPO / "demos" / f"{env}.zarr"
        expert_runs = [r for r in rows if r["run"].startswith(f"expert-{env}-")]
        if store.exists():
            demos = read_demos(store)
            returns = demos.episode_returns
            lengths = sorted({int(n) for n in np.diff(demos.episode_ends, prepend=0)})
            store_cell = (
                f"{demos.n_episodes} episodes x {'/'.join(map(str, lengths))} steps, "
                f"{store_megabytes(store):.1f} MB"
            )
            return_cell = f"{returns.mean():.0f} +- {returns.std():.0f}"
            fell = demos.attrs.get("discarded_fallen_episodes", [])
            if fell:  # the store holds whole episodes only: say what the expert did unfiltered
                tried = Recording(returns, tuple(fell)).attempted_returns
                return_cell += (
                    f"; left out: {len(fell)} of {len(tried)} tried, fallen "
                    f"(mean of all {len(tried)}: {tried.mean():.0f})"
                )
            trained = demos.attrs.get("expert_training_steps")
            trained_cell = f"{int(trained) // 1000}k env steps" if trained else "-"
        else:
            store_cell, return_cell = "none yet", "-"
            trained_cell = (
                ", ".join(
                    f"training: best {r['best_return']:.0f} at {r['env_steps'] // 1000}k"
                    + ("" if r["extra_terms"] == "none" else f" ({r['extra_terms']})")
                    for r in expert_runs
                )
                or "not started"
            )
        imitation = [r for r in rows if r["env"] == env and r["reward"] == "learned"]
        done = sum(r["status"] == "finished" for r in imitation)
        sd2ail = [
            r for r in imitation
            if r["algo"] == "sd2ail" and int(r["num_demos"]) == 1 and r["extra_terms"] == "none"
        ]  # fmt: skip
        best_cell = (
            f"{max(r['best_return'] for r in sd2ail):.0f} ({len(sd2ail)})" if sd2ail else "-"
        )
        lines.append(
            f"| {env} | {store_cell} | {return_cell} | {trained_cell} "
            f"| {done} / {len(imitation)} | {best_cell} |"
        )
    return "\n".join(lines)


def replace_between(path: Path, begin: str, end: str, text: str) -> None:
    content = path.read_text()
    start, stop = content.index(begin), content.index(end)
    path.write_text(content[: start + len(begin)] + "\n" + text + "\n" + content[stop:])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, action="append", default=[])
    parser.add_argument(
        "--readme", action="store_true", help="rewrite the tables in README.md and benchmarks/"
    )
    args = parser.parse_args()
    sources = sorted(GRID_ROOT.iterdir()) if GRID_ROOT.is_dir() else []
    for run_dir in [*sources, *args.run_dir]:
        archive(run_dir)
    rows = build()
    print(summary_markdown(rows))
    if args.readme:
        replace_between(REPO / "README.md", TASKS_BEGIN, TASKS_END, tasks_markdown(rows))
        bench = REPO / "benchmarks" / "README.md"
        replace_between(bench, README_BEGIN, README_END, summary_markdown(rows))
        for env in sorted({row["env"] for row in rows}):
            begin, end = f"<!-- runs.csv {env}:begin -->", f"<!-- runs.csv {env}:end -->"
            if begin in bench.read_text():
                replace_between(bench, begin, end, runs_markdown(rows, env))


if __name__ == "__main__":
    main()
