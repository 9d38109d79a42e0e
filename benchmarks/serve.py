"""Serving performance of ComputeReward: in-process RewardLearner vs the gRPC server on loopback.

    python benchmarks/serve.py                      # Hopper preset, ~3 minutes
    python benchmarks/serve.py --quick              # a smoke run (short windows)

Part 1 (`batch`): rewards/s and p50/p99 latency per call for batch sizes 1, 32, 256, 4096, with
one caller: `RewardLearner.reward` in this process and `RewardClient.reward` against
`sd2ail-reward serve --no-train` in a subprocess (same preset, demos, seed, torch threads).
A `grpc-getinfo` row times GetInfo (no model, no tensors): the cost of any RPC.
Part 2 (`concurrency`): 1, 4 and 16 concurrent single-transition clients (one process each,
as single-env clients run; closed loop) against two servers, dynamic batching on and off;
then (`concurrency-threads`) 16 clients as threads of this process, the earlier method.
Each configuration's time (`--seconds`) is split into `--rounds` rounds that alternate between
the compared modes, so a change of background load hits both sides alike. Rows for the server
also report its model-evaluation time per evaluated batch (from GetStats), and every row the
CPU time per call of the server process (all threads, /proc) and of the calling process(es).

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
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from sd2ail_reward.client import ServerInfo
    from sd2ail_reward.spawn import LocalServer

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
    server_cpu_ms: float = float("nan")
    """CPU time of the server process (all threads) per request."""
    client_cpu_ms: float = float("nan")
    """CPU time of the calling process(es) per call (in-process: the whole call)."""


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
    call: Callable[[], object], seconds: float, warmup_s: float, pid: int | None = None
) -> tuple[int, float, np.ndarray, float, float]:
    """Closed loop: (calls, elapsed, latencies in s, CPU s of this process, CPU s of process
    `pid`) over `seconds` after `warmup_s`."""
    end_warmup = time.perf_counter() + warmup_s
    while time.perf_counter() < end_warmup:
        call()
    lat = []
    cpu0, other0 = time.process_time(), proc_cpu_s(pid) if pid else float("nan")
    start = time.perf_counter()
    stop = start + seconds
    while True:
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
        lat.append(t1 - t0)
        if t1 >= stop:
            break
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu0
    other = proc_cpu_s(pid) - other0 if pid else float("nan")
    return len(lat), elapsed, np.asarray(lat), cpu, other


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
    cpu: tuple[float, float] = (float("nan"), float("nan")),
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
        server_cpu_ms=round(cpu[0] * 1e3 / max(calls, 1), 3),
        client_cpu_ms=round(cpu[1] * 1e3 / max(calls, 1), 3),
    )
    print(
        f"{part:12s} {mode:12s} clients={clients:<3d} batch={batch:<5d} "
        f"{out.rewards_per_s:>10.0f} rewards/s  p50 {out.p50_ms:8.3f} ms  "
        f"p99 {out.p99_ms:8.3f} ms  batch/eval {out.mean_batch_requests:5}  "
        f"server compute/eval {out.server_compute_ms} ms  CPU/call server "
        f"{out.server_cpu_ms} ms client {out.client_cpu_ms} ms",
        flush=True,
    )
    return out


def start_server(args: list[str], log: Path) -> LocalServer:
    """`sd2ail-reward serve` on 127.0.0.1:0 (the library's spawner), back once SERVING.
    No token: the figures compare with runs before auth existed, and on loopback."""
    from sd2ail_reward.spawn import LocalServer

    return LocalServer(args, log_path=log, auth=False, cwd=ROOT, ready_timeout_s=120)


def batch_part(args: argparse.Namespace, store: Path, server_args: list[str]) -> list[Row]:
    """In-process vs gRPC per batch size, in alternating rounds (load drift hits both)."""
    import grpc
    import torch

    from sd2ail_reward.client import RewardClient
    from sd2ail_reward.demos import read_demos
    from sd2ail_reward.learner import RewardLearner
    from sd2ail_reward.rpc import reward_pb2, reward_pb2_grpc
    from sd2ail_reward.serve_cli import learner_config, parse_serve_args

    torch.set_num_threads(args.torch_threads)
    demos = read_demos(store)
    parsed = parse_serve_args(server_args)
    learner = RewardLearner(learner_config(parsed.learner, demos.env_id), demos, seed=0)
    rng = np.random.default_rng(1)
    rows = []
    server = start_server(server_args, args.log_dir / "serve-batch.log")
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
                    pid = server.proc.pid if mode == "grpc" else None
                    calls_, elapsed, lat, cpu, server_cpu = measure(
                        call, args.seconds / args.rounds, args.warmup, pid
                    )
                    found[mode].add(calls_, elapsed, lat, server_cpu, cpu)
            after = client.stats()["serving"]
            batches = max(after["batches"] - before["batches"], 1)
            compute = (after["compute_ms_total"] - before["compute_ms_total"]) / batches
            for mode, window in found.items():
                rows.append(
                    row("batch", mode, 1, b, *window.result(), cpu=window.cpu,
                        server_compute_ms=compute if mode == "grpc" else float("nan"))
                )  # fmt: skip
        # The floor under every RPC: GetInfo does no model work and no tensor decoding.
        channel = grpc.insecure_channel(server.address)
        stub = reward_pb2_grpc.RewardServiceStub(channel)
        info_request = reward_pb2.GetInfoRequest()
        window = Window()
        for _ in range(args.rounds):
            calls_, elapsed, lat, cpu, server_cpu = measure(
                partial(stub.GetInfo, info_request, timeout=60),
                args.seconds / args.rounds / 2,
                args.warmup,
                server.proc.pid,
            )
            window.add(calls_, elapsed, lat, server_cpu, cpu)
        rows.append(row("batch", "grpc-getinfo", 1, 0, *window.result(), cpu=window.cpu))
        channel.close()
    finally:
        server.stop()
    return rows


class Window:
    """Calls, time, latencies and CPU (server, client) summed over several rounds."""

    def __init__(self) -> None:
        self.calls, self.elapsed, self.lat = 0, 0.0, [np.zeros(0)]
        self.cpu = (0.0, 0.0)

    def add(
        self, calls: int, elapsed: float, lat: np.ndarray, server_cpu: float, client_cpu: float
    ) -> None:
        self.calls += calls
        self.elapsed += elapsed
        self.lat.append(lat)
        self.cpu = (self.cpu[0] + server_cpu, self.cpu[1] + client_cpu)

    def result(self) -> tuple[int, float, np.ndarray]:
        return self.calls, self.elapsed, np.concatenate(self.lat)


_Result = tuple[int, float, np.ndarray, float, float]


def _client_process(conn: Connection) -> None:
    """One single-env client in its own process: connect, then closed loops on command."""
    from sd2ail_reward.client import RewardClient

    clients: dict[str, RewardClient] = {}
    while (msg := conn.recv()) is not None:
        address, obs, act, seconds, warmup, start_at = msg
        if address not in clients:
            clients[address] = RewardClient(address, timeout_s=30)
        call = partial(clients[address].reward, obs, act)
        if start_at is None:  # connect before timing
            call()
            conn.send(None)
            continue
        time.sleep(max(0.0, start_at - time.monotonic()))  # CLOCK_MONOTONIC: system-wide
        conn.send(measure(call, seconds, warmup))
    for client in clients.values():
        client.close()


class ClientProcesses:
    """Closed-loop single-transition clients, one process each (as envs run): no client
    shares a GIL with another, so the clients' own Python cost runs in parallel."""

    def __init__(self, n: int) -> None:
        ctx = mp.get_context("spawn")  # no inherited gRPC or torch state
        self.conns: list[Connection] = []
        self.procs = []
        for _ in range(n):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_client_process, args=(child,), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def run(
        self,
        address: str,
        n: int,
        obs: np.ndarray,
        act: np.ndarray,
        seconds: float,
        warmup: float,
        start_at: float,
    ) -> list[_Result]:
        conns = self.conns[:n]
        for i, conn in enumerate(conns):
            conn.send((address, obs[i], act[i], seconds, warmup, None))
        for conn in conns:
            conn.recv()
        for i, conn in enumerate(conns):
            conn.send((address, obs[i], act[i], seconds, warmup, start_at))
        return [conn.recv() for conn in conns]

    def close(self) -> None:
        for conn in self.conns:
            conn.send(None)
        for proc in self.procs:
            proc.join(30)


def _client_threads(
    address: str,
    n: int,
    obs: np.ndarray,
    act: np.ndarray,
    seconds: float,
    warmup: float,
    start_at: float,
) -> list[_Result]:
    """Closed-loop single-transition clients as threads of this process (one channel each)."""
    from sd2ail_reward.client import RewardClient

    clients = [RewardClient(address, timeout_s=30) for _ in range(n)]
    for i, c in enumerate(clients):  # connect before timing
        c.reward(obs[i], act[i])
    results: list[_Result] = [(0, 0.0, np.zeros(0), 0.0, 0.0)] * n

    def run(i: int) -> None:
        time.sleep(max(0.0, start_at - time.monotonic()))
        results[i] = measure(partial(clients[i].reward, obs[i], act[i]), seconds, warmup)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in clients:
        c.close()
    return results


def run_clients(
    address: str,
    n: int,
    info: ServerInfo,
    args: argparse.Namespace,
    seconds: float,
    procs: ClientProcesses | None,
    server_pid: int,
) -> tuple[int, float, np.ndarray, dict[str, float]]:
    """n closed-loop clients, one transition per call, as processes (`procs`) or threads:
    (calls, elapsed, latencies, and over the window: the server's serving stats as
    {batches, requests, compute_ms}, its CPU s per request, the clients' CPU s per call)."""
    from sd2ail_reward.client import RewardClient

    rng = np.random.default_rng(n)
    obs = rng.normal(size=(n, 1, info.obs_dim)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(n, 1, info.act_dim)).astype(np.float32)
    start_at = time.monotonic() + 1.0  # every client connected by then
    server_cpu: list[float] = []

    def sample_server_cpu() -> None:  # over the timed part of the clients' loops
        for t in (start_at + args.warmup, start_at + args.warmup + seconds):
            time.sleep(max(0.0, t - time.monotonic()))
            server_cpu.append(proc_cpu_s(server_pid))

    sampler = threading.Thread(target=sample_server_cpu)
    with RewardClient(address, timeout_s=30) as probe:
        before = probe.stats()["serving"]
        sampler.start()
        if procs is not None:
            results = procs.run(address, n, obs, act, seconds, args.warmup, start_at)
        else:
            results = _client_threads(address, n, obs, act, seconds, args.warmup, start_at)
        sampler.join()
        after = probe.stats()["serving"]
    calls = sum(r[0] for r in results)
    delta = {
        "batches": after["batches"] - before["batches"],
        "requests": after["reward_requests"] - before["reward_requests"],
        "compute_ms": after["compute_ms_total"] - before["compute_ms_total"],
        "server_cpu_s": server_cpu[1] - server_cpu[0],
        # threads: each one's process_time is the whole process's, over the same window
        "client_cpu_s": sum(r[3] for r in results) / (1 if procs is not None else n),
    }
    elapsed = max(r[1] for r in results)
    return calls, elapsed, np.concatenate([r[2] for r in results]), delta


def concurrency_part(args: argparse.Namespace, server_args: list[str]) -> list[Row]:
    """Batching on vs off, both servers up, alternating rounds per client count; clients are
    processes, then (part `concurrency-threads`, 16 clients) threads of this process."""
    from sd2ail_reward.client import RewardClient

    servers = {
        "batching-on": start_server([*server_args, "--batching"], args.log_dir / "serve-on.log"),
        "batching-off": start_server(
            [*server_args, "--no-batching"], args.log_dir / "serve-off.log"
        ),
    }
    procs = ClientProcesses(max(CLIENTS))
    rows = []
    try:
        info = RewardClient(servers["batching-on"].address).info()
        plan: list[tuple[str, int, ClientProcesses | None]]
        plan = [("concurrency", n, procs) for n in CLIENTS]
        plan.append(("concurrency-threads", max(CLIENTS), None))
        for part, n, kind in plan:
            found = {mode: Window() for mode in servers}
            totals = {
                mode: {"batches": 0.0, "requests": 0.0, "compute_ms": 0.0} for mode in servers
            }
            for _ in range(args.rounds):
                for mode, server in servers.items():
                    calls, elapsed, lat, delta = run_clients(
                        server.address, n, info, args, args.seconds / args.rounds, kind,
                        server.proc.pid,
                    )  # fmt: skip
                    found[mode].add(
                        calls, elapsed, lat, delta.pop("server_cpu_s"), delta.pop("client_cpu_s")
                    )
                    for key, value in delta.items():
                        totals[mode][key] += value
            for mode in servers:
                t = totals[mode]
                batches = max(t["batches"], 1.0)
                rows.append(
                    row(part, mode, n, 1, *found[mode].result(), cpu=found[mode].cpu,
                        mean_batch=t["requests"] / batches,
                        server_compute_ms=t["compute_ms"] / batches)
                )  # fmt: skip
    finally:
        procs.close()
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
    on = get.get(("concurrency-threads", "batching-on", 16, 1))
    off = get.get(("concurrency-threads", "batching-off", 16, 1))
    if on and off:
        out.append(
            f"(16 clients as threads of one process: {on.rewards_per_s / off.rewards_per_s:.2f}x)"
        )
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
    if any(r.part == "batch" for r in rows):  # log axes need data (--part concurrency)
        ax1.set(xscale="log", yscale="log")
    ax1.set(xlabel="batch size (rows per call)", ylabel="rewards / s", title="one caller")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend()
    width = 0.38
    for k, mode in enumerate(("batching-on", "batching-off")):
        pts = [r for r in rows if r.part == "concurrency" and r.mode == mode]
        xs = np.arange(len(pts)) + (k - 0.5) * width
        bars = ax2.bar(xs, [r.rewards_per_s for r in pts], width, label=mode)
        ax2.bar_label(bars, [f"p99 {r.p99_ms:.1f} ms" for r in pts], fontsize=7)
        ax2.set_xticks(np.arange(len(pts)), [f"{r.clients} clients" for r in pts])
    ax2.set(ylabel="rewards / s", title="single-transition clients (batch 1), one process each")
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
            "--demos", str(store), "--preset", args.preset, "--no-train",
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
