"""Dynamic batching of reward requests (as Triton's), without a dispatcher thread.

Handlers hand in rows that are already validated (`RewardModel.rows`), so a malformed request
never reaches the queue and cannot disturb anyone else's batch. Every batch is scored with one
published model, and each caller gets exactly its own slice of the result.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from sd2ail_reward.learner import RewardModel
from sd2ail_reward.server.errors import (
    Cancelled,
    DeadlineExceeded,
    InternalError,
    Overloaded,
    ShuttingDown,
)
from sd2ail_reward.server.metrics import ServingMetrics

__all__ = ["Batcher", "OnCancel", "score"]

logger = logging.getLogger(__name__)

OnCancel = Callable[[Callable[[], None]], object]
"""Registers a callback run when the RPC ends early (gRPC's `context.add_callback`)."""


def score(model: RewardModel, x_BD: np.ndarray) -> np.ndarray:
    """Rewards of validated rows; a non-finite reward is a server fault, never sent."""
    out = model.reward_rows(x_BD)
    if not np.isfinite(out).all():
        raise FloatingPointError("the model produced a non-finite reward")
    return out


class _Request:
    """One request in the batcher. `state`: pending -> (lead ->) scoring -> done."""

    __slots__ = (
        "cancelled",
        "deadline",
        "enqueued",
        "error",
        "result",
        "rows",
        "state",
        "version",
        "wake",
    )

    def __init__(self, rows: np.ndarray, deadline: float) -> None:
        self.rows = rows
        self.deadline = deadline
        self.enqueued = time.monotonic()
        self.wake: threading.Event | None = None  # only a queued request waits on one
        self.state = "pending"
        self.result: np.ndarray | None = None
        self.version = 0
        self.error: Exception | None = None
        self.cancelled = False

    def finish(self, error: Exception | None = None) -> None:
        self.error = error
        self.state = "done"
        if self.wake is not None:
            self.wake.set()


class Batcher:
    """Leader/follower batching: a request that finds the batcher idle is scored at once by its
    own handler thread (no thread hand-off, so one client sees the latency of a direct call).
    Requests that arrive while a batch is being scored queue up (bounded); when the batch is
    done, the oldest queued request's thread is woken to lead the next batch, which takes every
    queued request (FIFO) up to `max_batch_rows` rows, after waiting up to `max_queue_delay_s`
    for more. Exactly one batch is scored at a time; requests whose deadline passed in the queue
    are dropped uncomputed.
    """

    def __init__(
        self,
        model: Callable[[], RewardModel],
        metrics: ServingMetrics,
        *,
        max_batch_rows: int,
        max_queue_delay_s: float,
        max_queue_size: int,
    ) -> None:
        self._model = model
        self._metrics = metrics
        self._max_rows = max_batch_rows
        self._delay = max_queue_delay_s
        self._max_queue = max_queue_size
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._pending: deque[_Request] = deque()
        self._busy = False
        self._closed = False

    def depth(self) -> int:
        """Requests waiting in the queue now."""
        return len(self._pending)

    def submit(
        self, rows: np.ndarray, timeout_s: float | None, on_cancel: OnCancel | None = None
    ) -> tuple[np.ndarray, int]:
        """Score `rows` (alone or with other requests): (rewards, model version). Raises a
        `ServerError` when the queue is full, the deadline passes, the client cancels or the
        server stops."""
        deadline = math.inf if timeout_s is None else time.monotonic() + timeout_s
        req = _Request(rows, deadline)
        with self._lock:
            if self._closed:
                raise ShuttingDown("server is shutting down; retry later")
            if len(self._pending) >= self._max_queue:
                raise Overloaded(
                    f"reward queue full ({self._max_queue} requests waiting): the server is "
                    "overloaded; back off and retry, batch transitions per request, or raise "
                    "--queue-size"
                )
            self._pending.append(req)
            if self._busy:
                wake = req.wake = threading.Event()
                self._arrived.notify()
            else:  # idle: this handler thread scores at once (no hand-off)
                self._busy = True
                req.state = "lead"
        if req.state == "pending" and on_cancel is not None:

            def cancelled() -> None:  # the RPC ended (e.g. the client cancelled): stop waiting
                req.cancelled = True
                wake.set()

            on_cancel(cancelled)
        while True:
            if req.state == "lead":
                self._lead()
                continue
            if req.state == "done":
                break
            timeout = None  # being scored: the answer is moments away
            if req.state == "pending" and deadline != math.inf:
                timeout = max(deadline - time.monotonic(), 0.0)
            woke = wake.wait(timeout)
            with self._lock:
                wake.clear()
                if req.state != "pending" or (woke and not req.cancelled):
                    continue
                self._pending.remove(req)  # gave up while queued: leave the queue
            if woke:
                raise Cancelled("the client cancelled while waiting in the reward queue")
            raise DeadlineExceeded("deadline passed while waiting in the reward queue")
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result, req.version

    def close(self) -> None:
        """Refuse new requests; queued ones fail with ShuttingDown."""
        error = ShuttingDown("server is shutting down; retry later")
        with self._lock:
            self._closed = True
            while self._pending:
                self._pending.popleft().finish(error)
            self._arrived.notify_all()

    def _take(self) -> list[_Request]:
        """The next batch (lock held), after waiting up to the queue delay for more rows."""
        if self._delay > 0 and self._pending:
            wait_until = self._pending[0].enqueued + self._delay
            while sum(r.rows.shape[0] for r in self._pending) < self._max_rows:
                remaining = wait_until - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._arrived.wait(remaining)
        batch: list[_Request] = []
        rows = 0
        while self._pending:
            n = self._pending[0].rows.shape[0]
            if batch and rows + n > self._max_rows:
                break
            req = self._pending.popleft()
            req.state = "scoring"
            batch.append(req)
            rows += n
        return batch

    def _lead(self) -> None:
        """Score one batch, then hand the lead to the oldest queued request (or go idle)."""
        with self._lock:
            batch = self._take()
        try:
            self._score(batch)
        finally:
            with self._lock:
                if self._pending:
                    nxt = self._pending[0]
                    nxt.state = "lead"
                    assert nxt.wake is not None
                    nxt.wake.set()
                else:
                    self._busy = False

    def _score(self, batch: list[_Request]) -> None:
        start = time.monotonic()
        live: list[_Request] = []
        for req in batch:
            if req.cancelled:
                req.finish(Cancelled("cancelled"))
            elif req.deadline <= start:
                req.finish(DeadlineExceeded("deadline passed in the reward queue"))
                self._metrics.expired_in_queue()
            else:
                live.append(req)
        if not live:
            return
        try:
            model = self._model()  # one model version for the whole batch
            x = live[0].rows if len(live) == 1 else np.concatenate([r.rows for r in live])
            out = score(model, x)
        except Exception as err:
            logger.exception("batched reward evaluation failed")
            failure = InternalError(f"reward evaluation failed: {err}")
            for req in live:
                req.finish(failure)
            return
        compute_ms = (time.monotonic() - start) * 1e3
        self._metrics.batch(
            [r.rows.shape[0] for r in live], [(start - r.enqueued) * 1e3 for r in live], compute_ms
        )
        offset = 0
        for req in live:
            n = req.rows.shape[0]
            req.result = out[offset : offset + n]
            req.version = model.version
            offset += n
            req.finish()
