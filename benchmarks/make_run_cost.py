"""`make run`'s wall time against an older commit's `make run`, side by side on one budget
(issue "Training cost": halved against main before that work, 16cc029).

    python benchmarks/make_run_cost.py --steps 20000             # ~25 min with the machine quiet

Each commit gets a detached git worktree (removed afterwards unless --keep). Its `make run`
command is read from ITS Makefile (`make -n run`, this checkout's venv as BIN, so only the
code differs: PYTHONPATH points at the worktree, and the local reward server the run starts
inherits it), `--steps`/`--no-progress` are appended, and the commits' runs start at the same
moment in their own worktrees, so they share the machine as two users' runs would. Recorded per
run: wall time to exit, env steps per second, and its evaluations (`metrics.csv`), so the
budget's learning curves sit beside the times. A budget shorter than `make run`'s own is a
timing, not a learning-curve comparison: the full curves are the grids' runs (runs.csv).

Wall time to exit favours the slower run: once the faster one ends, the slower has the machine
to itself. So each run's ms per env step is also taken from its log lines (`HH:MM:SS step N`)
between `--rate-from-step` (past the random warm-up) and the moment the first run ended, while
both ran (`overlap_ms_per_step`). `--reanalyse` recomputes those columns from the committed logs.

`--alone` runs the commits one after the other instead, each with the machine to itself (stop
every other run first), so wall time to exit compares the two on equal terms; each run's
ms per env step is then taken from `--rate-from-step` to its own last progress line.

Writes benchmarks/results/make_run_cost.csv (`--alone`: make_run_cost_alone.csv), .png and each
run's log (<csv stem>_<label>.log); prints the markdown table.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.train_cost import run_meta, write_rows  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def make_run_command(tree: Path, bin_dir: Path) -> str:
    """The shell command `make run` at `tree` would execute, with `bin_dir` as its venv."""
    dry = subprocess.run(
        ["make", "-s", "-n", "-C", str(tree), "-o", ".venv/.installed", "run", f"BIN={bin_dir}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.replace("\\\n", " ")
    lines = [ln for ln in dry.splitlines() if "sd2ail-reward train" in ln]
    if len(lines) != 1:
        raise RuntimeError(f"expected one `sd2ail-reward train` line in make -n run:\n{dry}")
    return lines[0]


STEP_LINE = re.compile(r"^(\d\d):(\d\d):(\d\d) step (\d+)", re.MULTILINE)


def step_times(log: str) -> list[tuple[float, int]]:
    """(seconds since the log's first midnight, env step) of each progress line."""
    points: list[tuple[float, int]] = []
    day = 0.0
    for h, m, sec, step in STEP_LINE.findall(log):
        t = 3600 * int(h) + 60 * int(m) + int(sec) + day
        if points and t < points[-1][0]:  # past midnight
            day += 86_400
            t += 86_400
        points.append((t, int(step)))
    return points


def overlap_ms_per_step(log: str, from_step: int, until_s: float) -> float | None:
    """Wall ms per env step from the first progress line at or past `from_step` to the last
    one at or before `until_s` (None if fewer than two such lines)."""
    points = [(t, s) for t, s in step_times(log) if s >= from_step and t <= until_s]
    if len(points) < 2:
        return None
    (t0, s0), (t1, s1) = points[0], points[-1]
    return 1e3 * (t1 - t0) / (s1 - s0)


def add_rate_columns(
    rows: list[dict[str, object]], logs: list[str], from_step: int, kind: str, until_s: float
) -> None:
    """`<kind>_ms_per_step` of each run from `from_step` to its last progress line at or before
    `until_s`, and `<kind>_baseline_over_candidate`."""
    for row, log in zip(rows, logs, strict=True):
        rate = overlap_ms_per_step(log, from_step, until_s)
        row[f"{kind}_ms_per_step"] = "" if rate is None else round(rate, 2)
    rates = [row[f"{kind}_ms_per_step"] for row in rows]
    if all(isinstance(r, float) for r in rates):
        ratio = float(str(rates[0])) / float(str(rates[1]))
        for row in rows:
            row[f"{kind}_baseline_over_candidate"] = round(ratio, 3)


def add_overlap_columns(rows: list[dict[str, object]], logs: list[str], from_step: int) -> None:
    """Side by side: each run's rate until the first run's last progress line (after it, the
    other had the machine to itself)."""
    timelines = [step_times(log) for log in logs]
    if not all(timelines):  # a run too short to log its progress (every 30 s)
        for row in rows:
            row["overlap_ms_per_step"] = ""
        return
    until = min(points[-1][0] for points in timelines)
    add_rate_columns(rows, logs, from_step, "overlap", until)


def add_alone_columns(rows: list[dict[str, object]], logs: list[str], from_step: int) -> None:
    """One after the other: each run's rate to its own last progress line."""
    add_rate_columns(rows, logs, from_step, "alone", float("inf"))


def log_path(out: Path, label: object) -> Path:
    return out.with_name(f"{out.stem}_{label}.log")


def reanalyse(out: Path, from_step: int) -> None:
    with out.open() as f:
        rows: list[dict[str, object]] = list(csv.DictReader(f))
    add_overlap_columns(rows, [log_path(out, r["label"]).read_text() for r in rows], from_step)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        print(row["label"], row["overlap_ms_per_step"], row.get("overlap_baseline_over_candidate"))


@dataclass
class MakeRun:
    """One commit's `make run`: its worktree and command, then its process and wall time."""

    label: str
    commit: str
    tree: Path
    command: str
    started: float = 0.0
    process: subprocess.Popen[bytes] | None = None
    wall_s: float | None = None
    returncode: int | None = None

    @property
    def log_path(self) -> Path:
        return self.tree / "make_run.log"

    def start(self) -> None:
        """The command in its worktree, with that worktree's code first on the path."""
        env = {**os.environ, "PYTHONPATH": str(self.tree)}
        with self.log_path.open("w") as log:  # the child keeps its own descriptor
            self.started = time.perf_counter()
            self.process = subprocess.Popen(
                ["bash", "-c", self.command],
                cwd=self.tree,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def poll(self) -> None:
        """Records the wall time and exit status once the process has ended."""
        if self.wall_s is None and self.process is not None:
            returncode = self.process.poll()
            if returncode is not None:
                self.wall_s = time.perf_counter() - self.started
                self.returncode = returncode


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--baseline", default="16cc029", help="main before the work (default: %(default)s)"
    )
    p.add_argument("--candidate", default="HEAD", help="the commit measured against it")
    p.add_argument(
        "--steps", type=int, default=20_000, help="env steps of each run, warm-up included"
    )
    p.add_argument("--extra", default="", help="arguments appended to both commands (smoke tests)")
    p.add_argument("--keep", action="store_true", help="keep the worktrees and their runs")
    p.add_argument(
        "--rate-from-step", type=int, default=6000, help="ms per env step from this env step"
    )
    p.add_argument("--reanalyse", action="store_true", help="overlap columns from the logs")
    p.add_argument("--alone", action="store_true", help="one run after the other (quiet machine)")
    p.add_argument("--out", type=Path, default=None, help="default: results/make_run_cost.csv")
    args = p.parse_args()
    if args.out is None:
        args.out = RESULTS / ("make_run_cost_alone.csv" if args.alone else "make_run_cost.csv")
    return args


def prepare(args: argparse.Namespace, scratch: Path, bin_dir: Path) -> list[MakeRun]:
    """A worktree and a `make run` command for the baseline and the candidate commit."""
    runs = []
    for label, rev in (("baseline", args.baseline), ("candidate", args.candidate)):
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", rev],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        tree = scratch / label
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(tree), commit],
            check=True,
        )
        command = make_run_command(tree, bin_dir)
        command += f" --steps {args.steps} --no-progress {args.extra}".rstrip()
        runs.append(MakeRun(label, commit, tree, command))
    return runs


def execute(runs: list[MakeRun], alone: bool) -> None:
    """Starts the runs at once, or (`alone`) each once the one before has ended; returns when
    all have ended."""
    for run in runs:
        print(f"{run.label} {run.commit}: {run.command}", flush=True)
        run.start()
        while alone and run.wall_s is None:
            run.poll()
            time.sleep(1.0)
    while any(run.wall_s is None for run in runs):
        for run in runs:
            run.poll()
        time.sleep(1.0)


def result_rows(
    runs: list[MakeRun], args: argparse.Namespace, bin_dir: Path
) -> list[dict[str, object]]:
    """One row per run (its log written beside the CSV), with the two speedup columns."""
    rows: list[dict[str, object]] = []
    logs = []
    for run in runs:
        log = run.log_path.read_text().replace(str(bin_dir), "$BIN")
        if run.returncode != 0:
            raise RuntimeError(f"{run.label} failed ({run.returncode}):\n{log[-3000:]}")
        logs.append(log)
        log_path(args.out, run.label).write_text(log)
        evals = read_metrics(sorted((run.tree / "runs").iterdir())[0])
        assert run.wall_s is not None
        rows.append(
            {
                "label": run.label,
                "commit": run.commit,
                "steps": args.steps,
                "wall_s": round(run.wall_s, 1),
                "env_steps_per_s": round(args.steps / run.wall_s, 2),
                "eval_steps": " ".join(e["env_step"] for e in evals),
                "eval_returns": " ".join(f"{float(e['eval_return_mean']):.0f}" for e in evals),
                "make_run_command": " ".join(run.command.replace(str(bin_dir), "$BIN").split()),
            }
        )
    speedup = float(str(rows[0]["wall_s"])) / float(str(rows[1]["wall_s"]))
    for row in rows:
        row["baseline_over_candidate"] = round(speedup, 3)
    if args.alone:
        add_alone_columns(rows, logs, args.rate_from_step)
    else:
        add_overlap_columns(rows, logs, args.rate_from_step)
    return rows


def print_table(rows: list[dict[str, object]], alone: bool, rate_from_step: int) -> None:
    print("| run | commit | wall (s) | env steps / s | evaluations (step: return) |")
    print("|---|---|---:|---:|---|")
    for row in rows:
        evals_text = ", ".join(
            f"{int(s) / 1000:g}k: {r}"
            for s, r in zip(
                str(row["eval_steps"]).split(), str(row["eval_returns"]).split(), strict=True
            )
        )
        print(
            f"| {row['label']} | {row['commit']} | {row['wall_s']} | "
            f"{row['env_steps_per_s']} | {evals_text} |"
        )
    rate = rows[0].get(f"{'alone' if alone else 'overlap'}_baseline_over_candidate", "?")
    print(f"baseline / candidate wall time: {rows[0]['baseline_over_candidate']}x; "
          f"per env step past step {rate_from_step}: {rate}x")  # fmt: skip


def main() -> None:
    args = parse_args()
    if args.reanalyse:
        reanalyse(args.out, args.rate_from_step)
        return
    load_start = os.getloadavg()[0]
    bin_dir = Path(sys.executable).parent
    scratch = Path(tempfile.mkdtemp(prefix="make_run_cost-"))
    try:
        runs = prepare(args, scratch, bin_dir)
        execute(runs, args.alone)
        rows = result_rows(runs, args, bin_dir)
        write_rows(args.out, rows, run_meta(load_start))
        how = "one after the other" if args.alone else "side by side"
        plot(rows, args.out.with_suffix(".png"), how)
        print_table(rows, args.alone, args.rate_from_step)
    finally:
        if not args.keep:  # every worktree made, even when the second could not be
            for tree in scratch.iterdir():
                subprocess.run(
                    ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                    check=False,
                )
            subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], check=False)
            shutil.rmtree(scratch, ignore_errors=True)


def plot(rows: list[dict[str, object]], path: Path, how: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_r) = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = [f"{r['label']}\n{r['commit']}" for r in rows]
    ax_t.bar(labels, [float(str(r["wall_s"])) for r in rows], color=["0.6", "C0"])
    ax_t.set_ylabel("wall time (s)")
    ax_t.set_title(f"make run, {rows[0]['steps']} env steps, {how}")
    for r in rows:
        steps = [int(s) for s in str(r["eval_steps"]).split()]
        returns = [float(x) for x in str(r["eval_returns"]).split()]
        ax_r.plot(steps, returns, marker="o", label=f"{r['label']} {r['commit']}")
    ax_r.set_xlabel("env step")
    ax_r.set_ylabel("true return (evaluation)")
    ax_r.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
