"""Serving figures: counters, batch-size histograms, queue and compute times, error codes.

One lock, taken once per batch, request or error, so counting never slows the reward path down.
GetStats reads them as a `ServingStats` message; the reporter logs a line from them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque

import grpc
import numpy as np

from sd2ail_reward.rpc import reward_pb2

__all__ = ["ServingMetrics"]

logger = logging.getLogger("sd2ail_reward.server")


def _bucket(n: int) -> int:
    """Power-of-two bucket: 1 -> 0, 2 -> 1, 3..4 -> 2, 5..8 -> 3, ..."""
    return max(0, (n - 1).bit_length())


def _histogram(counts: Counter[int]) -> list[reward_pb2.HistogramBucket]:
    return [
        reward_pb2.HistogramBucket(lower=1 if k == 0 else (1 << (k - 1)) + 1, upper=1 << k, count=c)
        for k, c in sorted(counts.items())
    ]


def _percentile(values: deque[float], q: float) -> float:
    return float(np.percentile(np.fromiter(values, float), q)) if values else 0.0


class ServingMetrics:
    """Serving counters since the server started (not carried over by a resume)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.reward_requests = self.reward_rows = self.batches = 0
        self.push_requests = self.push_rows = self.duplicate_pushes = 0
        self.expired = self.checkpoints_written = 0
        self.last_checkpoint = ""
        self.batch_requests: Counter[int] = Counter()
        self.batch_rows: Counter[int] = Counter()
        self.sum_batch_requests = self.sum_batch_rows = 0
        self.queue_ms: deque[float] = deque(maxlen=10_000)
        self.queue_ms_total = self.compute_ms_total = 0.0
        self.compute_ms: deque[float] = deque(maxlen=1_000)
        self.errors: Counter[str] = Counter()
        self.rates = {"rewards_per_s": 0.0, "pushed_rows_per_s": 0.0, "updates_per_s": 0.0}
        self._mark: tuple[float, int, int, int] = (self.started, 0, 0, 0)

    # ------------------------------------------------------------------ counting

    def batch(self, rows_per_request: list[int], queue_ms: list[float], compute_ms: float) -> None:
        """One model evaluation over len(rows_per_request) requests."""
        with self.lock:
            n, rows = len(rows_per_request), sum(rows_per_request)
            self.reward_requests += n
            self.reward_rows += rows
            self.batches += 1
            self.batch_requests[_bucket(n)] += 1
            self.batch_rows[_bucket(rows)] += 1
            self.sum_batch_requests += n
            self.sum_batch_rows += rows
            self.queue_ms.extend(queue_ms)
            self.compute_ms.append(compute_ms)
            self.queue_ms_total += sum(queue_ms)
            self.compute_ms_total += compute_ms

    def error(self, code: grpc.StatusCode) -> None:
        with self.lock:
            self.errors[code.name] += 1

    def expired_in_queue(self) -> None:
        with self.lock:
            self.expired += 1

    def pushed(self, rows: int) -> None:
        with self.lock:
            self.push_requests += 1
            self.push_rows += rows

    def duplicate(self) -> None:
        with self.lock:
            self.duplicate_pushes += 1

    def checkpoint(self, generation: str) -> None:
        with self.lock:
            self.checkpoints_written += 1
            self.last_checkpoint = generation

    # ------------------------------------------------------------------ reading

    def interval(self, updates: int) -> tuple[float, dict[str, float]]:
        """Rates since the previous call; also kept for GetStats."""
        now = time.monotonic()
        with self.lock:
            then, rewards0, pushed0, updates0 = self._mark
            dt = max(now - then, 1e-9)
            self.rates = {
                "rewards_per_s": (self.reward_rows - rewards0) / dt,
                "pushed_rows_per_s": (self.push_rows - pushed0) / dt,
                "updates_per_s": (updates - updates0) / dt,
            }
            self._mark = (now, self.reward_rows, self.push_rows, updates)
            return dt, dict(self.rates)

    def log(
        self,
        dt: float,
        rates: dict[str, float],
        model_version: int,
        pending: int,
        learner: dict[str, float],
    ) -> None:
        """The periodic one-line report: throughput, batching, model, D, buffers, errors."""
        with self.lock:
            mean_batch = self.sum_batch_requests / max(self.batches, 1)
            q99 = _percentile(self.queue_ms, 99)
            errors = dict(self.errors)
        logger.info(
            "%.0f rewards/s, %.0f pushed rows/s, %.1f updates/s over %.0fs | mean batch "
            "%.1f req, queue p99 %.2f ms | model v%d, %d updates pending | D expert %.3f "
            "agent %.3f pseudo %.3f | buffers agent %d pseudo %d | errors %s",
            rates["rewards_per_s"],
            rates["pushed_rows_per_s"],
            rates["updates_per_s"],
            dt,
            mean_batch,
            q99,
            model_version,
            pending,
            learner.get("d_reward/expert", float("nan")),
            learner.get("d_reward/agent", float("nan")),
            learner.get("d_reward/pseudo", float("nan")),
            int(learner.get("buffer/agent", 0)),
            int(learner.get("buffer/pseudo", 0)),
            errors or "none",
        )

    def message(
        self, queue_depth: int, model_version: int, pending: int
    ) -> reward_pb2.ServingStats:
        with self.lock:
            b = max(self.batches, 1)
            return reward_pb2.ServingStats(
                uptime_s=time.monotonic() - self.started,
                reward_requests=self.reward_requests,
                reward_rows=self.reward_rows,
                push_requests=self.push_requests,
                push_rows=self.push_rows,
                duplicate_pushes=self.duplicate_pushes,
                batches=self.batches,
                batch_requests_histogram=_histogram(self.batch_requests),
                batch_rows_histogram=_histogram(self.batch_rows),
                mean_batch_requests=self.sum_batch_requests / b,
                mean_batch_rows=self.sum_batch_rows / b,
                queue_ms_mean=float(np.mean(self.queue_ms)) if self.queue_ms else 0.0,
                queue_ms_p50=_percentile(self.queue_ms, 50),
                queue_ms_p99=_percentile(self.queue_ms, 99),
                compute_ms_mean=float(np.mean(self.compute_ms)) if self.compute_ms else 0.0,
                compute_ms_p99=_percentile(self.compute_ms, 99),
                errors_by_code=dict(self.errors),
                expired_in_queue=self.expired,
                queue_depth=queue_depth,
                model_version=model_version,
                pending_updates=pending,
                checkpoints_written=self.checkpoints_written,
                last_checkpoint=self.last_checkpoint,
                compute_ms_total=self.compute_ms_total,
                queue_ms_total=self.queue_ms_total,
                **self.rates,
            )
