"""Serving performance of ComputeReward: in-process RewardLearner vs the gRPC server on loopback.

    python benchmarks/serve.py                      # Hopper preset, ~3 minutes
    python benchmarks/serve.py --quick              # a smoke run (short windows)

Part 1 (`batch`): rewards/s and p50/p99 latency per call for batch sizes 1, 32, 256, 4096, with
one caller: `RewardLearner.reward` in this process and `RewardClient.reward` against
`sd2ail-reward serve --no-train` in a subprocess (same preset, demos, seed, torch threads).
Part 2 (`concurrency`): 1, 4 and 16 concurrent single-transition clients (threads of this
process, one channel each, closed loop) against two servers, dynamic batching on and off.
Each configuration's time (`--seconds`) is split into `--rounds` rounds that alternate between
the compared modes, so a change of background load hits both sides alike. Rows for the server
also report its model-evaluation time per evaluated batch (from GetStats).

Floors (issue 4): gRPC at batch 256 >= 85% of the in-process rate; 16 clients with batching on
>= 3x batching off; p99 at batch 1 with one client < 2 ms. The script prints each check.

Writes a CSV (one row per measurement) and a PNG. Demo store: `--demos`, else a synthetic
Hopper-shaped store (11-d obs, 3-d action in [-1, 1]) in a temp dir: the reward's cost depends
only on the dims and the preset, not on the data.
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sd2ail_reward.client import ServerInfo

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (1, 32, 256, 4096)
CLIENTS = (1, 4, 16)


@dataclass
class Row:
    part: str
    mode: str
    clients: int
    batch: int
    calls: int
    seconds: float
    rewards_per_s: float
    p50_ms: float
    p99_ms: float
    mean_batch_requests: float = float("nan")
    server_compute_ms: float = float("nan")


def synthetic_store(path: Path, env_id: str, obs_dim: int, act_dim: int) -> Path:
    from sd2ail_reward.demos import Episode, write_episodes

    rng = np.random.default_rng(0)
    steps = 1000
    obs = rng.normal(size=(steps, obs_dim)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(steps, act_dim)).astype(np.float32)
    episode = Episode(
        obs=obs,
        action=act,
        next_obs=obs + 0.01,
        reward=np.ones(steps, np.float32),
        terminated=np.zeros(steps, bool),
        truncated=np.zeros(steps, bool),
        reset_seed=0,
    )
    write_episodes(
        path,
        [episode],
        env_id=env_id,
        attrs={"action_low": [-1.0] * act_dim, "action_high": [1.0] * act_dim},
        overwrite=True,
    )
    return path


def measure(
    call: Callable[[], object], seconds: float, warmup_s: float
) -> tuple[int, float, np.ndarray]:
    """Closed loop: (calls, elapsed, latencies in s) over `seconds` after `warmup_s`."""
    end_warmup = time.perf_counter() + warmup_s
    while time.perf_counter() < end_warmup:
        call()
    lat = []
    start = time.perf_counter()
    stop = start + seconds
    while True:
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
        lat.append(t1 - t0)
        if t1 >= stop:
            break
    return len(lat), time.perf_counter() - start, np.asarray(lat)


def row(
    part: str,
    mode: str,
    clients: int,
    batch: int,
    calls: int,
    elapsed: float,
    lat: np.ndarray,
    *,
    mean_batch: float = float("nan"),
    server_compute_ms: float = float("nan"),
) -> Row:
    out = Row(
        part=part,
        mode=mode,
        clients=clients,
        batch=batch,
        calls=calls,
        seconds=round(elapsed, 3),
        rewards_per_s=round(calls * batch / elapsed, 1),
        p50_ms=round(float(np.percentile(lat, 50)) * 1e3, 3),
        p99_ms=round(float(np.percentile(lat, 99)) * 1e3, 3),
        mean_batch_requests=round(mean_batch, 2),
        server_compute_ms=round(server_compute_ms, 3),
    )
    print(
        f"{part:12s} {mode:12s} clients={clients:<3d} batch={batch:<5d} "
        f"{out.rewards_per_s:>10.0f} rewards/s  p50 {out.p50_ms:8.3f} ms  "
        f"p99 {out.p99_ms:8.3f} ms  batch/eval {out.mean_batch_requests:5}  "
        f"server compute/eval {out.server_compute_ms} ms",
        flush=True,
    )
    return out


class Server:
    """`sd2ail-reward serve` on 127.0.0.1:0 in a subprocess."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sd2ail_reward.cli", "serve", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode().strip()
            if line.startswith("SD2AIL_SERVER_PORT="):
                self.address = "127.0.0.1:" + line.split("=", 1)[1]
                break
        else:
            raise RuntimeError(f"server exited; see {log}")
        from sd2ail_reward.client import RewardClient

        RewardClient(self.address).wait_ready(120)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.log.close()


def batch_part(args: argparse.Namespace, store: Path, server_args: list[str]) -> list[Row]:
    """In-process vs gRPC per batch size, in alternating rounds (load drift hits both)."""
    import torch

    from sd2ail_reward.cli import build_parser, learner_config
    from sd2ail_reward.client import RewardClient
    from sd2ail_reward.demos import read_demos
    from sd2ail_reward.learner import RewardLearner

    torch.set_num_threads(args.torch_threads)
    demos = read_demos(store)
    parsed = build_parser().parse_args(["serve", *server_args])
    learner = RewardLearner(learner_config(parsed, demos.env_id), demos, seed=0)
    rng = np.random.default_rng(1)
    rows = []
    server = Server(server_args, args.log_dir / "serve-batch.log")
    try:
        client = RewardClient(server.address, timeout_s=60)
        for b in BATCHES:
            obs = rng.normal(size=(b, demos.obs_dim)).astype(np.float32)
            act = rng.uniform(-1, 1, size=(b, demos.act_dim)).astype(np.float32)
            got = client.reward(obs, act)
            assert np.max(np.abs(got - learner.reward(obs, act))) <= 1e-6, "served != learner"
            calls = {
                "in-process": partial(learner.reward, obs, act),
                "grpc": partial(client.reward, obs, act),
            }
            found = {mode: Window() for mode in calls}
            before = client.stats()["serving"]
            for _ in range(args.rounds):
                for mode, call in calls.items():
                    found[mode].add(*measure(call, args.seconds / args.rounds, args.warmup))
            after = client.stats()["serving"]
            batches = max(after["batches"] - before["batches"], 1)
            compute = (after["compute_ms_total"] - before["compute_ms_total"]) / batches
            for mode, window in found.items():
                rows.append(
                    row("batch", mode, 1, b, *window.result(),
                        server_compute_ms=compute if mode == "grpc" else float("nan"))
                )  # fmt: skip
    finally:
        server.stop()
    return rows


class Window:
    """Calls, time and latencies summed over several measurement rounds."""

    def __init__(self) -> None:
        self.calls, self.elapsed, self.lat = 0, 0.0, [np.zeros(0)]

    def add(self, calls: int, elapsed: float, lat: np.ndarray) -> None:
        self.calls += calls
        self.elapsed += elapsed
        self.lat.append(lat)

    def result(self) -> tuple[int, float, np.ndarray]:
        return self.calls, self.elapsed, np.concatenate(self.lat)


def run_clients(
    address: str, n: int, info: ServerInfo, args: argparse.Namespace, seconds: float
) -> tuple[int, float, np.ndarray, dict[str, float]]:
    """n closed-loop clients, one transition per call: (calls, elapsed, latencies, the
    server's serving stats before and after as {batches, requests, compute_ms})."""
    from sd2ail_reward.client import RewardClient

    clients = [RewardClient(address, timeout_s=30) for _ in range(n)]
    rng = np.random.default_rng(n)
    obs = rng.normal(size=(n, 1, info.obs_dim)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(n, 1, info.act_dim)).astype(np.float32)
    for i, c in enumerate(clients):  # connect before timing
        c.reward(obs[i], act[i])
    before = clients[0].stats()["serving"]
    results: list[tuple[int, float, np.ndarray]] = [(0, 0.0, np.zeros(0))] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        call = partial(clients[i].reward, obs[i], act[i])
        results[i] = measure(call, seconds, args.warmup)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = clients[0].stats()["serving"]
    for c in clients:
        c.close()
    delta = {
        "batches": after["batches"] - before["batches"],
        "requests": after["reward_requests"] - before["reward_requests"],
        "compute_ms": after["compute_ms_total"] - before["compute_ms_total"],
    }
    calls = sum(r[0] for r in results)
    elapsed = max(r[1] for r in results)
    return calls, elapsed, np.concatenate([r[2] for r in results]), delta


def concurrency_part(args: argparse.Namespace, server_args: list[str]) -> list[Row]:
    """Batching on vs off, both servers up, alternating rounds per client count."""
    from sd2ail_reward.client import RewardClient

    servers = {
        "batching-on": Server([*server_args, "--batching"], args.log_dir / "serve-on.log"),
        "batching-off": Server([*server_args, "--no-batching"], args.log_dir / "serve-off.log"),
    }
    rows = []
    try:
        info = RewardClient(servers["batching-on"].address).info()
        for n in CLIENTS:
            found = {mode: Window() for mode in servers}
            totals = {
                mode: {"batches": 0.0, "requests": 0.0, "compute_ms": 0.0} for mode in servers
            }
            for _ in range(args.rounds):
                for mode, server in servers.items():
                    calls, elapsed, lat, delta = run_clients(
                        server.address, n, info, args, args.seconds / args.rounds
                    )
                    found[mode].add(calls, elapsed, lat)
                    for key, value in delta.items():
                        totals[mode][key] += value
            for mode in servers:
                t = totals[mode]
                batches = max(t["batches"], 1.0)
                rows.append(
                    row("concurrency", mode, n, 1, *found[mode].result(),
                        mean_batch=t["requests"] / batches,
                        server_compute_ms=t["compute_ms"] / batches)
                )  # fmt: skip
    finally:
        for server in servers.values():
            server.stop()
    return rows


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "grpcio", "protobuf", "numpy", "sd2ail-reward"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "?"
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def checks(rows: list[Row]) -> list[str]:
    get = {(r.part, r.mode, r.clients, r.batch): r for r in rows}
    out = []
    inproc, grpc_ = get.get(("batch", "in-process", 1, 256)), get.get(("batch", "grpc", 1, 256))
    if inproc and grpc_:
        ratio = grpc_.rewards_per_s / inproc.rewards_per_s
        out.append(f"gRPC/in-process at batch 256: {ratio:.1%} (floor 85%): "
                   + ("PASS" if ratio >= 0.85 else "MISS"))  # fmt: skip
    on = get.get(("concurrency", "batching-on", 16, 1))
    off = get.get(("concurrency", "batching-off", 16, 1))
    if on and off:
        ratio = on.rewards_per_s / off.rewards_per_s
        out.append(f"16 clients, batching on / off: {ratio:.2f}x (floor 3x): "
                   + ("PASS" if ratio >= 3 else "MISS"))  # fmt: skip
    one = get.get(("batch", "grpc", 1, 1))
    if one:
        out.append(f"p99 at batch 1, one client: {one.p99_ms:.3f} ms (floor < 2 ms): "
                   + ("PASS" if one.p99_ms < 2 else "MISS"))  # fmt: skip
    return out


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode, marker in (("in-process", "o"), ("grpc", "s")):
        pts = [r for r in rows if r.part == "batch" and r.mode == mode]
        ax1.plot([r.batch for r in pts], [r.rewards_per_s for r in pts], marker=marker,
                 label=mode)  # fmt: skip
    ax1.set(xscale="log", yscale="log", xlabel="batch size (rows per call)",
            ylabel="rewards / s", title="one caller")  # fmt: skip
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend()
    width = 0.38
    for k, mode in enumerate(("batching-on", "batching-off")):
        pts = [r for r in rows if r.part == "concurrency" and r.mode == mode]
        xs = np.arange(len(pts)) + (k - 0.5) * width
        bars = ax2.bar(xs, [r.rewards_per_s for r in pts], width, label=mode)
        ax2.bar_label(bars, [f"p99 {r.p99_ms:.1f} ms" for r in pts], fontsize=7)
        ax2.set_xticks(np.arange(len(pts)), [f"{r.clients} clients" for r in pts])
    ax2.set(ylabel="rewards / s", title="single-transition clients (batch 1)")
    ax2.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demos", type=Path, help="demo store (default: synthetic Hopper)")
    parser.add_argument("--preset", default="hopper", help="learner preset (default: hopper)")
    parser.add_argument(
        "--seconds", type=float, default=6.0, help="measurement time per configuration"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating rounds the time is split into"
    )
    parser.add_argument("--warmup", type=float, default=0.5, help="warm-up before each window")
    parser.add_argument("--torch-threads", type=int, default=1, help="server and in-process")
    parser.add_argument("--max-delay-ms", type=float, default=0.0, help="batcher queue delay")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/serve.csv")
    parser.add_argument("--png", type=Path, default=ROOT / "benchmarks/results/serve.png")
    parser.add_argument("--quick", action="store_true", help="0.5 s windows (smoke test)")
    parser.add_argument("--part", choices=("all", "batch", "concurrency"), default="all")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.rounds = 0.6, 0.1, 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        args.log_dir = Path(tmp)
        store = args.demos or synthetic_store(Path(tmp) / "Hopper-v5.zarr", "Hopper-v5", 11, 3)
        server_args = [
            "--demos", str(store), "--port", "0", "--preset", args.preset, "--no-train",
            "--torch-threads", str(args.torch_threads), "--log-every", "0",
            "--max-delay-ms", str(args.max_delay_ms), "--seed", "0",
        ]  # fmt: skip
        info = {**versions(), "cpu": cpu_model(), "cores": str(os.cpu_count())}
        print(" | ".join(f"{k} {v}" for k, v in info.items()), flush=True)
        rows: list[Row] = []
        if args.part in ("all", "batch"):
            rows += batch_part(args, store, server_args)
        if args.part in ("all", "concurrency"):
            rows += concurrency_part(args, server_args)
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    title = (f"sd2ail-reward ComputeReward, preset {args.preset}, {info['cores']} cores "
             f"({info['cpu']}), torch {info['torch']}, grpcio {info['grpcio']}")  # fmt: skip
    plot(rows, args.png, title)
    for line in checks(rows):
        print(line)
    print(f"wrote {args.out} and {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
