"""What the "any agent" integrations cost: env steps/s through Ray env workers, and SAC steps/s
of Stable-Baselines3 vs the project's Tianshou loop through the same reward server.

    python benchmarks/any_agent_cost.py ray    # -> benchmarks/results/any_agent_ray.csv
    python benchmarks/any_agent_cost.py sac    # -> benchmarks/results/any_agent_sac.csv
    python benchmarks/any_agent_cost.py plot   # -> any_agent_cost.png, sb3_sac_pendulum_*.png

`ray`: random-action collection on Pendulum-v1 through a Tianshou `Collector` (no policy
network, no updates), every env wrapped with `SD2AILRewardWrapper` against one local server
serving a frozen reward (``--no-train``, so the discriminator's training does not compete for
the CPU; pushes still happen): the raw env and the wrapped env in a `DummyVectorEnv` (no Ray),
then 1 and 2 Ray workers (`agents/ray_workers.py`) on ``ray.init(num_cpus=2)``. Each setting
is warmed up, then timed `--repeats` times.

`sac`: one local server per regime, ``--no-train`` (the agent side alone: env, reward RPCs,
SAC updates) and ``train`` (the discriminator trains on every pushed transition, as in real
use, and both agents wait for it with Sync); SB3's SAC (`agents/sb3_example.py`, step-time
reward or ``--relabel``) and `sd2ail-reward train` (Tianshou SAC, relabelling by default or
``--no-relabel``) run as subprocesses for `--short` and `--long` env steps with the same
1000-step random warm-up, 256x256 networks and batch 256; steps/s = (long - short) / (time
difference), which cancels warm-up and the final evaluation; the time is each loop's own clock
(SB3: its last evaluation row's ``wall_s``; Tianshou: the run's timings.json), so interpreter
start-up and imports, seconds on a loaded machine, stay out (the process figure is beside it).

Each row records the load average: the machine this ran on is shared (other training runs).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DEMOS = REPO / "demos" / "Pendulum-v1.zarr"
SERVE = ["--demos", str(DEMOS), "--demo-episodes", "6", "--torch-threads", "1"]


def versions() -> str:
    names = ("torch", "gymnasium", "tianshou", "stable-baselines3", "ray", "grpcio")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} -")
    return f"Python {platform.python_version()}, " + ", ".join(found)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def merge_row(
    rows: list[dict[str, Any]], row: dict[str, Any], key: tuple[str, ...]
) -> list[dict[str, Any]]:
    """`rows` with `row` in place of the one with the same `key` values (else appended)."""
    same = [i for i, r in enumerate(rows) if all(str(r[k]) == str(row[k]) for k in key)]
    if same:
        return [row if i == same[0] else r for i, r in enumerate(rows)]
    return [*rows, row]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}", flush=True)


# ------------------------------------------------------------------------------ ray


def bench_ray(args: argparse.Namespace) -> None:
    import gymnasium as gym
    import ray

    # Ray first: it forks its daemons, which must happen before this process opens channels.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from tianshou.env import BaseVectorEnv, DummyVectorEnv

    from agents.ray_workers import WrappedEnvFactory, collect_rate, ray_vector_env
    from sd2ail_reward.spawn import LocalServer

    rows: list[dict[str, Any]] = []
    with LocalServer([*SERVE, "--no-train"], cli_args=["--log-level", "WARNING"]) as server:
        factory = WrappedEnvFactory("Pendulum-v1", server.address, token=server.token)

        def raw() -> gym.Env[Any, Any]:
            return gym.make("Pendulum-v1")

        settings: list[tuple[str, int, Callable[[], BaseVectorEnv]]] = [
            ("raw env, no wrapper (DummyVectorEnv)", 1, lambda: DummyVectorEnv([raw])),
            ("wrapped, DummyVectorEnv", 1, lambda: DummyVectorEnv([factory])),
            ("wrapped, DummyVectorEnv", 2, lambda: DummyVectorEnv([factory] * 2)),
            ("wrapped, Ray workers", 1, lambda: ray_vector_env(factory, 1)),
            ("wrapped, Ray workers", 2, lambda: ray_vector_env(factory, 2)),
        ]
        for name, n_envs, make in settings:
            venv = make()
            try:
                collect_rate(venv, 200)  # actors started, JIT compiled, channels open
                for rep in range(args.repeats):
                    before = load()
                    rate = collect_rate(venv, args.steps)
                    row = {
                        "setting": name,
                        "envs": n_envs,
                        "repeat": rep,
                        "steps": args.steps,
                        "env_steps_per_s": round(rate, 1),
                        "load_avg_1min": before,
                    }
                    print(row, flush=True)
                    rows.append(row)
            finally:
                venv.close()
    ray.shutdown()
    write_rows(RESULTS / "any_agent_ray.csv", rows)


# ------------------------------------------------------------------------------ sac


def sac_command(agent: str, address: str, steps: int, run_dir: Path) -> list[str]:
    py = sys.executable
    if agent.startswith("sb3"):
        cmd = [py, "agents/sb3_example.py", "--server", address, "--steps", str(steps)]
        cmd += ["--learning-starts", "1000", "--eval-every", "0", "--eval-episodes", "1"]
        return cmd + (["--relabel"] if agent == "sb3-relabel" else [])
    cmd = [py, "-m", "sd2ail_reward.cli", "train", "--server", address, "--env", "Pendulum-v1"]
    cmd += ["--demos", str(DEMOS), "--demo-episodes", "6", "--steps", str(steps)]
    cmd += ["--start-steps", "1000", "--eval-every", str(steps), "--eval-episodes", "1"]
    cmd += ["--run-dir", str(run_dir), "--no-progress"]
    return cmd + (["--no-relabel"] if agent == "tianshou-no-relabel" else [])


def timed_run(cmd: list[str], token: str | None, log: Path, run_dir: Path) -> tuple[float, float]:
    """(process wall time, training-loop wall time): the loop's own clock, which leaves out
    interpreter start-up and imports (seconds on a loaded machine): SB3's last evaluation row
    (`wall_s`, from the start of `learn`), the Tianshou loop's timings.json."""
    env = {**os.environ, "SD2AIL_REWARD_TOKEN": token or ""}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({done.returncode}); see {log}")
    if "train" in cmd:
        loop = float(json.loads((run_dir / "timings.json").read_text())["wall_s"])
    else:
        last = [ln for ln in done.stdout.splitlines() if ln.startswith("step ")][-1]
        loop = float(last.split("wall_s ")[1].split()[0])
    return wall, loop


def bench_sac(args: argparse.Namespace) -> None:
    from sd2ail_reward.spawn import LocalServer

    # rows of earlier runs are kept (a setting measured again replaces its row)
    csv_path = RESULTS / "any_agent_sac.csv"
    rows: list[dict[str, Any]] = [dict(r) for r in read_csv(csv_path)] if csv_path.exists() else []
    tmp = Path(tempfile.mkdtemp(prefix="any-agent-sac-"))
    for regime in args.regimes:
        flags = [*SERVE, "--no-train"] if regime == "no-train" else list(SERVE)
        # `train` pairs its SAC checkpoint (at each evaluation) with one of the server's
        flags += ["--checkpoint-dir", str(tmp / f"server-{regime}"), "--checkpoint-every", "0"]
        with LocalServer(flags, cli_args=["--log-level", "WARNING"]) as server:
            for agent in args.agents:
                walls: dict[int, tuple[float, float]] = {}
                for steps in (args.short, args.long):
                    run_dir = tmp / f"{regime}-{agent}-{steps}"
                    cmd = sac_command(agent, server.address, steps, run_dir)
                    before = load()
                    walls[steps] = timed_run(cmd, server.token, tmp / "runs.log", run_dir)
                    print(f"{regime} {agent} {steps} steps: {walls[steps]} s", flush=True)
                (short_p, short_l), (long_p, long_l) = walls[args.short], walls[args.long]
                extra = args.long - args.short
                row = {
                    "server": regime,
                    "agent": agent,
                    "short_steps": args.short,
                    "long_steps": args.long,
                    "short_loop_s": round(short_l, 1),
                    "long_loop_s": round(long_l, 1),
                    "sac_steps_per_s": round(extra / (long_l - short_l), 2),
                    "short_process_s": round(short_p, 1),
                    "long_process_s": round(long_p, 1),
                    "process_steps_per_s": round(extra / (long_p - short_p), 2),
                    "load_avg_1min": before,
                }
                print(row, flush=True)
                rows = merge_row(rows, row, key=("server", "agent"))
                write_rows(RESULTS / "any_agent_sac.csv", rows)
    print(f"logs: {tmp / 'runs.log'}", flush=True)


# ------------------------------------------------------------------------------ plot


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def plot(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    ray_rows = read_csv(RESULTS / "any_agent_ray.csv")
    labels = list(dict.fromkeys(f"{r['setting']}\n{r['envs']} env(s)" for r in ray_rows))
    rates = [
        [
            float(r["env_steps_per_s"])
            for r in ray_rows
            if f"{r['setting']}\n{r['envs']} env(s)" == k
        ]
        for k in labels
    ]
    left.barh(range(len(labels)), [np.median(r) for r in rates], color="tab:blue")
    for i, r in enumerate(rates):
        left.plot(r, [i] * len(r), "k.", ms=4)
    left.set_yticks(range(len(labels)), labels, fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("env steps/s (random actions, Pendulum-v1; median, dots: repeats)")
    left.set_title("Env side: frozen reward server, 2-core CPU")

    sac_rows = read_csv(RESULTS / "any_agent_sac.csv")
    names = [f"{r['agent']}\n(server: {r['server']})" for r in sac_rows]
    right.barh(
        range(len(names)), [float(r["sac_steps_per_s"]) for r in sac_rows], color="tab:green"
    )
    right.set_yticks(range(len(names)), names, fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("SAC env steps/s (1 update per step, batch 256, 256x256)")
    right.set_title("SB3 vs Tianshou SAC through one server")
    fig.tight_layout()
    fig.savefig(RESULTS / "any_agent_cost.png", dpi=120)
    print(f"wrote {RESULTS / 'any_agent_cost.png'}")

    curve = RESULTS / "sb3_sac_pendulum_1demo_seed0.csv"
    if curve.exists():
        rows = read_csv(curve)
        steps = [int(r["step"]) for r in rows]
        fig, ax = plt.subplots(figsize=(6.5, 4))
        ax.plot(
            steps, [float(r["eval_return"]) for r in rows], "o-", label="SB3 SAC, learned reward"
        )
        ax.axhline(-153.6, ls="--", c="gray", label="expert demos (mean of 40)")
        ax.axhline(-300, ls=":", c="tab:red", label="target -300")
        ax.set_xlabel("env steps")
        ax.set_ylabel("true return (10 deterministic episodes)")
        ax.set_title("Pendulum-v1 from 1 demo: Stable-Baselines3 SAC, seed 0")
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        out = curve.with_suffix(".png")
        fig.savefig(out, dpi=120)
        print(f"wrote {out}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    r = sub.add_parser("ray", help="env steps/s: no Ray vs 1 and 2 Ray workers")
    r.add_argument("--steps", type=int, default=2000, help="env steps per timed collection")
    r.add_argument("--repeats", type=int, default=3)
    s = sub.add_parser("sac", help="SB3 vs Tianshou SAC steps/s through one server")
    s.add_argument("--short", type=int, default=1500, help="env steps of the short runs")
    s.add_argument("--long", type=int, default=3000, help="env steps of the long runs")
    s.add_argument("--regimes", nargs="+", default=["no-train", "train"])
    s.add_argument(
        "--agents",
        nargs="+",
        default=["sb3", "sb3-relabel", "tianshou", "tianshou-no-relabel"],
    )
    sub.add_parser("plot", help="figures from the CSVs")
    args = parser.parse_args(argv)
    print(f"{versions()}; {os.cpu_count()} CPUs; load {os.getloadavg()}", flush=True)
    {"ray": bench_ray, "sac": bench_sac, "plot": plot}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
