"""Pushed transitions before the trainer takes them: idempotency, quotas, the queue.

A push is identified by (client_id, sequence) and ingested at most once, also across a restart
(the ledger's state goes into every checkpoint), so clients may retry a push whose answer was
lost. Per-client token buckets bound how much of the agent buffer one client can fill (reward
poisoning, RELIABILITY.md §4.1). A refused push ingests nothing.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from sd2ail_reward.server.errors import InvalidRequest, Overloaded

__all__ = [
    "MAX_CLIENT_ID_CHARS",
    "SEQUENCE_WINDOW",
    "PushLedger",
    "PushResult",
    "Sequences",
    "check_client",
]

MAX_CLIENT_ID_CHARS = 128
SEQUENCE_WINDOW = 64
"""Pushes of one client may arrive out of order by up to this many sequence numbers."""


def check_client(client_id: str, sequence: int) -> None:
    """InvalidRequest unless client_id and sequence can identify a push."""
    if not client_id:
        raise InvalidRequest(
            "client_id: required, got none (any stable id for the pushing client, e.g. a UUID)"
        )
    if len(client_id) > MAX_CLIENT_ID_CHARS or not all(33 <= ord(c) <= 126 for c in client_id):
        raise InvalidRequest(
            f"client_id: expected 1 to {MAX_CLIENT_ID_CHARS} printable ASCII characters without "
            f"spaces, got {len(client_id)} characters"
        )
    if sequence < 1:
        raise InvalidRequest("sequence: expected >= 1, strictly increasing per client_id, got 0")


@dataclass
class Sequences:
    """Which sequences of one client were ingested: the highest, and every ingested one within
    SEQUENCE_WINDOW below it (a client's concurrent pushes can arrive out of order)."""

    high: int = 0
    recent: set[int] = field(default_factory=set)

    def ingested(self, sequence: int) -> bool:
        return sequence <= self.high - SEQUENCE_WINDOW or sequence in self.recent

    def add(self, sequence: int) -> None:
        self.recent.add(sequence)
        if sequence > self.high:
            self.high = sequence
            floor = self.high - SEQUENCE_WINDOW
            if min(self.recent) <= floor:
                self.recent = {q for q in self.recent if q > floor}

    def state(self) -> list[int]:
        """JSON form for checkpoint meta: [high, *recent]."""
        return [self.high, *sorted(self.recent)]

    @classmethod
    def from_state(cls, value: object) -> Sequences:
        if isinstance(value, int):
            return cls(high=value, recent={value})
        if not isinstance(value, list) or not value:
            raise ValueError(f"checkpoint meta: bad push sequence state {value!r}")
        return cls(high=int(value[0]), recent={int(q) for q in value[1:]})


@dataclass(frozen=True)
class PushResult:
    """What PushTransitions answers."""

    accepted_rows: int
    duplicate: bool
    last_sequence: int
    total_pushed: int


class PushLedger:
    """Accepted pushes (as discriminator rows) waiting for the trainer, plus the per-client
    sequences and quotas. Thread safe; `accepted` counts every row ever accepted."""

    def __init__(self, *, quota_rows_per_s: float, quota_window_s: float, max_clients: int):
        self._rate = quota_rows_per_s
        self._window = quota_window_s
        self._max_clients = max_clients
        self._lock = threading.Lock()
        self._pending: list[np.ndarray] = []
        self._sequences: OrderedDict[str, Sequences] = OrderedDict()
        self._quota: dict[str, tuple[float, float]] = {}
        self._accepted = 0

    @property
    def accepted(self) -> int:
        with self._lock:
            return self._accepted

    def restore(self, sequences: dict[str, object], total: int) -> None:
        """State of a checkpoint: sequences per client and rows accepted so far."""
        with self._lock:
            self._sequences = OrderedDict(
                (str(k), Sequences.from_state(v)) for k, v in sequences.items()
            )
            self._accepted = total

    def accept(self, client_id: str, sequence: int, x_BD: np.ndarray) -> PushResult:
        """Queue a push unless it is a retry of an ingested one; Overloaded over the quota."""
        rows = int(x_BD.shape[0])
        with self._lock:
            seen = self._sequences.get(client_id)
            if seen is None:
                seen = Sequences()
            elif seen.ingested(sequence):
                self._sequences.move_to_end(client_id)
                return PushResult(0, True, seen.high, self._accepted)
            self._charge_quota(client_id, rows)
            seen.add(sequence)
            self._sequences[client_id] = seen
            self._sequences.move_to_end(client_id)
            while len(self._sequences) > self._max_clients:
                forgotten, _ = self._sequences.popitem(last=False)
                self._quota.pop(forgotten, None)
            self._pending.append(x_BD)
            self._accepted += rows
            return PushResult(rows, False, seen.high, self._accepted)

    def take(self) -> list[np.ndarray]:
        """Every queued push, oldest first (the trainer ingests them)."""
        with self._lock:
            pending, self._pending = self._pending, []
        return pending

    def take_with_state(self) -> tuple[list[np.ndarray], dict[str, list[int]], int]:
        """Queued pushes, sequences and accepted rows at one moment (for a checkpoint)."""
        with self._lock:
            pending, self._pending = self._pending, []
            sequences = {k: v.state() for k, v in self._sequences.items()}
            return pending, sequences, self._accepted

    def _charge_quota(self, client_id: str, rows: int) -> None:
        """Token bucket per client (lock held)."""
        rate = self._rate
        if rate <= 0:
            return
        capacity = rate * self._window
        now = time.monotonic()
        tokens, then = self._quota.get(client_id, (capacity, now))
        tokens = min(capacity, tokens + (now - then) * rate)
        if rows > tokens:
            self._quota[client_id] = (tokens, now)
            raise Overloaded(
                f"push quota exceeded for client {client_id!r}: {rows} rows, {int(tokens)} "
                f"allowed now ({rate:g} rows/s, bursts up to {int(capacity)}); nothing was "
                "ingested, retry the same push later"
            )
        self._quota[client_id] = (tokens - rows, now)
