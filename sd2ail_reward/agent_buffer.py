"""FIFO buffer of the agent's pushed transitions, stored as discriminator rows."""

from __future__ import annotations

import numpy as np


class AgentBuffer:
    """Ring buffer of float32 rows; storage grows on demand up to `capacity`, so a server with
    a 1e6 capacity costs memory only for what was pushed."""

    def __init__(self, capacity: int, dim: int) -> None:
        if capacity < 1 or dim < 1:
            raise ValueError(f"capacity and dim must be >= 1, got {capacity}, {dim}")
        self.capacity = capacity
        self.dim = dim
        self._rows = np.zeros((min(capacity, 1024), dim), np.float32)
        self._size = 0
        self._next = 0
        self.total_added = 0

    def __len__(self) -> int:
        return self._size

    def _grow(self, needed: int) -> None:
        if needed <= self._rows.shape[0]:
            return
        new_len = min(self.capacity, max(needed, 2 * self._rows.shape[0]))
        grown = np.zeros((new_len, self.dim), np.float32)
        grown[: self._size] = self._rows[: self._size]
        self._rows = grown

    def add(self, x_ND: np.ndarray) -> None:
        if x_ND.ndim != 2 or x_ND.shape[1] != self.dim:
            raise ValueError(f"agent rows: expected shape (N, {self.dim}), got {x_ND.shape}")
        if x_ND.shape[0] > self.capacity:
            x_ND = x_ND[-self.capacity :]
        n = x_ND.shape[0]
        if self._size < self.capacity:
            self._grow(min(self.capacity, self._size + n))
        slots = (self._next + np.arange(n)) % self.capacity
        self._rows[slots] = x_ND
        self._next = int((self._next + n) % self.capacity)
        self._size = min(self.capacity, self._size + n)
        self.total_added += n

    def sample(self, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        if self._size == 0:
            raise ValueError("agent buffer is empty: push agent transitions before training")
        return self._rows[rng.integers(0, self._size, size=batch_size)]

    def latest(self, n: int) -> np.ndarray:
        """The `n` most recently added rows (fewer if the buffer holds fewer)."""
        n = min(n, self._size)
        slots = (self._next - n + np.arange(n)) % max(self.capacity, 1)
        return self._rows[slots]

    def state_dict(self) -> dict[str, np.ndarray | int]:
        return {
            "rows": self._rows[: self._size].copy() if self._size < self.capacity else self._rows,
            "size": self._size,
            "next": self._next,
            "total_added": self.total_added,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        rows = np.asarray(state["rows"], np.float32)
        size = int(state["size"])  # type: ignore[call-overload]
        if rows.ndim != 2 or rows.shape[1] != self.dim or rows.shape[0] != size:
            raise ValueError(f"agent buffer state: expected ({size}, {self.dim}), got {rows.shape}")
        self._rows = np.zeros((max(size, min(self.capacity, 1024)), self.dim), np.float32)
        self._rows[:size] = rows
        self._size = size
        self._next = int(state["next"])  # type: ignore[call-overload]
        self.total_added = int(state["total_added"])  # type: ignore[call-overload]
