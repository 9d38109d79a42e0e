"""Would a streaming RPC make Python gRPC cheap enough per call? An echo measurement.

The serving floors that issue 4 misses are bounded by what one Python gRPC call costs before
any model work (benchmarks/README.md). A bidirectional stream avoids per-call setup, so it is
the first alternative to `ComputeReward`'s unary call. This script measures both on a trivial
echo (no model, no validation, 200-byte messages, one closed-loop client, server in the same
process on 127.0.0.1) and reports latency and the process's CPU time per call (client and
server together), alternating the two modes:

    python benchmarks/grpc_stream_overhead.py [--calls 3000] [--repeats 3]

Writes `benchmarks/results/grpc_stream_overhead.csv` and `.png`.
"""

from __future__ import annotations

import argparse
import csv
import queue
import resource
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
MESSAGE = b"x" * 200
FIELDS = ("repeat", "mode", "calls", "p50_ms", "p99_ms", "cpu_ms_per_call")


def identity(payload: bytes) -> bytes:
    return payload


def echo_server() -> tuple[grpc.Server, int]:
    def unary(request: bytes, _context: Any) -> bytes:
        return request

    def stream(requests: Iterator[bytes], _context: Any) -> Iterator[bytes]:
        yield from requests

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=identity, response_serializer=identity
            ),
            "Stream": grpc.stream_stream_rpc_method_handler(
                stream, request_deserializer=identity, response_serializer=identity
            ),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


class StreamCaller:
    """One bidirectional stream used as a sequence of request / reply calls."""

    def __init__(self, method: grpc.StreamStreamMultiCallable) -> None:
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._replies: Iterator[bytes] = iter(method(self._requests()))

    def _requests(self) -> Iterator[bytes]:
        while (item := self._outbox.get()) is not None:
            yield item

    def __call__(self) -> bytes:
        self._outbox.put(MESSAGE)
        return next(self._replies)

    def close(self) -> None:
        self._outbox.put(None)
        for _ in self._replies:  # let the stream finish
            pass


def process_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(call: Callable[[], object], calls: int) -> dict[str, float]:
    for _ in range(200):  # warm-up
        call()
    latencies = np.empty(calls)
    cpu_start = process_cpu_s()
    for i in range(calls):
        start = time.perf_counter()
        call()
        latencies[i] = time.perf_counter() - start
    cpu = process_cpu_s() - cpu_start
    return {
        "p50_ms": float(np.percentile(latencies, 50) * 1e3),
        "p99_ms": float(np.percentile(latencies, 99) * 1e3),
        "cpu_ms_per_call": cpu / calls * 1e3,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "grpc_stream_overhead.csv")
    ns = parser.parse_args()

    server, port = echo_server()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    unary = channel.unary_unary(
        "/bench.Echo/Unary", request_serializer=identity, response_deserializer=identity
    )
    stream = channel.stream_stream(
        "/bench.Echo/Stream", request_serializer=identity, response_deserializer=identity
    )
    rows: list[dict[str, Any]] = []
    for repeat in range(ns.repeats):
        rows.append(
            {"repeat": repeat, "mode": "unary", "calls": ns.calls}
            | measure(lambda: unary(MESSAGE, timeout=5.0), ns.calls)
        )
        caller = StreamCaller(stream)
        rows.append(
            {"repeat": repeat, "mode": "bidi stream", "calls": ns.calls} | measure(caller, ns.calls)
        )
        caller.close()
    channel.close()
    server.stop(None)

    ns.out.parent.mkdir(parents=True, exist_ok=True)
    with ns.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, ns.out.with_suffix(".png"))
    for mode in ("unary", "bidi stream"):
        mine = [r for r in rows if r["mode"] == mode]
        print(
            f"{mode:>12}: p50 {np.median([r['p50_ms'] for r in mine]):.3f} ms, "
            f"p99 {np.median([r['p99_ms'] for r in mine]):.3f} ms, "
            f"CPU {np.median([r['cpu_ms_per_call'] for r in mine]):.3f} ms per call"
        )
    return 0


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    for ax, key, label in (
        (axes[0], "p50_ms", "p50 latency (ms)"),
        (axes[1], "cpu_ms_per_call", "CPU per call, client + server (ms)"),
    ):
        for offset, mode in ((-0.2, "unary"), (0.2, "bidi stream")):
            mine = [r for r in rows if r["mode"] == mode]
            ax.bar([r["repeat"] + offset for r in mine], [r[key] for r in mine], 0.4, label=mode)
        ax.set_xlabel("repeat")
        ax.set_ylabel(label)
    axes[0].legend()
    fig.suptitle("Python gRPC echo on 127.0.0.1: unary call vs message on a stream")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
