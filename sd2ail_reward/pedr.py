"""Prioritized expert demonstration replay (PEDR): sum-tree proportional PER, Schaul et al.

Follows `positron-lpc/SD2AIL: rlkit/data_management/prioritized_replay_buffer.py` (see
`shared/reference/ALGORITHM.md` §1, §3.3): priorities `min(|1 - D_train| + eps, 1) ** alpha`, new
rows at the maximum priority 1, stratified sampling, IS weights normalised by the batch maximum and
beta annealed by `beta_increment` at every sample call. One deliberate difference: a draw can never
land on an empty leaf through float round-off (the reference's `get_leaf` can, §4).

Pure numpy; randomness comes only from the `np.random.Generator` passed in, so a checkpoint of
`state_dict()` (arrays, python scalars and the generator state as a JSON string) resumes exactly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

StateDict = dict[str, np.ndarray | int | float | str]
"""What `state_dict()` returns: checkpointable without pickle."""

_RNG_KEY = "rng_state"


@dataclass(frozen=True)
class PrioritizedSample:
    """One minibatch and what is needed to weight its loss and update its priorities later."""

    x_BD: np.ndarray
    """float32 rows."""
    indices_B: np.ndarray
    """int64 slot indices in the buffer the row came from."""
    weights_B: np.ndarray
    """float32 importance-sampling weights, max == 1 (per buffer)."""
    source_B: np.ndarray
    """int64 buffer of each row: trajectory index for expert samples, 0 otherwise."""


# ---------------------------------------------------------------------------------------------
# Input checks (raise ValueError naming what was expected and what came in)
# ---------------------------------------------------------------------------------------------


def _check_count(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {int(value)}")
    return int(value)


def _check_real(name: str, value: object, low: float, *, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not np.isfinite(v) or v < low or (strict and v == low):
        bound = f"> {low}" if strict else f">= {low}"
        raise ValueError(f"{name} must be finite and {bound}, got {v}")
    return v


def _check_indices(name: str, indices: ArrayLike, high: int) -> np.ndarray:
    arr = np.asarray(indices)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= high:
        raise ValueError(f"{name} must lie in [0, {high}), got values in [{lo}, {hi}]")
    return arr.astype(np.int64)


def _check_values(name: str, values: ArrayLike, n: int, *, nonnegative: bool = False) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
    if arr.size and not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise ValueError(f"{name} must be real numbers, got dtype {arr.dtype}")
    out = arr.astype(np.float64)
    if not np.isfinite(out).all():
        raise ValueError(f"{name} must be finite, got {int((~np.isfinite(out)).sum())} NaN/Inf")
    if nonnegative and (out < 0).any():
        raise ValueError(f"{name} must be >= 0, got min {out.min()}")
    return out


def _check_rows(name: str, x: ArrayLike, dim: int) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"{name} must have shape (N, {dim}), got {arr.shape}")
    if arr.size and not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise ValueError(f"{name} must be real numbers, got dtype {arr.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(np.float32)
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{name} must be finite float32 rows, got {int(bad.sum())} row(s) with NaN/Inf "
            f"(or beyond float32 range), first at row {int(np.argmax(bad))}"
        )
    return out


def _sd_get(sd: Mapping[str, object], key: str) -> Any:
    if key not in sd:
        raise ValueError(f"state_dict lacks key {key!r}; got keys {sorted(sd)}")
    value = sd[key]
    if isinstance(value, np.ndarray) and value.ndim == 0:  # scalars after an npz round trip
        return value.item()
    return value


def _sd_int(sd: Mapping[str, object], key: str) -> int:
    return _check_count(f"state_dict[{key!r}]", _sd_get(sd, key), minimum=0)


def _sd_float(sd: Mapping[str, object], key: str) -> float:
    return _check_real(f"state_dict[{key!r}]", _sd_get(sd, key), low=0.0)


def _json_default(obj: object) -> object:
    # MT19937 keeps its key as an array; a list loads back into every bit generator.
    if isinstance(obj, np.ndarray | np.integer):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj)} in a generator state")


def _rng_state_json(rng: np.random.Generator) -> str:
    return json.dumps(rng.bit_generator.state, default=_json_default)


def _parse_rng_state(rng: np.random.Generator, text: object) -> dict[str, Any]:
    """Checked on a probe generator first so that a bad state leaves `rng` untouched."""
    if not isinstance(text, str):
        raise ValueError(f"state_dict[{_RNG_KEY!r}] must be a JSON string, got {type(text)}")
    try:
        state = json.loads(text)
        probe = type(rng.bit_generator)()
        probe.state = state
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(
            f"state_dict[{_RNG_KEY!r}] is not a valid {type(rng.bit_generator).__name__} "
            f"state: {exc}"
        ) from exc
    if not isinstance(state, dict):
        raise ValueError(f"state_dict[{_RNG_KEY!r}] must decode to a dict, got {type(state)}")
    return state


# ---------------------------------------------------------------------------------------------
# Sum tree
# ---------------------------------------------------------------------------------------------


class SumTree:
    """Binary sum tree over `capacity` leaves for O(log N) proportional draws.

    The leaves are padded to a power of two so that every draw descends the same number of levels
    and a whole batch descends together in numpy. Parents are always recomputed from their
    children (never patched by deltas), so no round-off drift accumulates and the tree is a pure
    function of its leaves: rebuilding it from saved leaves gives bit-identical sums.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = _check_count("capacity", capacity)
        self._n_leaves = 1 << (self._capacity - 1).bit_length()
        self._depth = self._n_leaves.bit_length() - 1
        # Node 1 is the root, node k has children 2k and 2k + 1, leaves are [n_leaves, 2 n_leaves).
        self._tree = np.zeros(2 * self._n_leaves, dtype=np.float64)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def total(self) -> float:
        return float(self._tree[1])

    @property
    def leaves(self) -> np.ndarray:
        """Copy of all `capacity` leaf priorities."""
        return self._tree[self._n_leaves : self._n_leaves + self._capacity].copy()

    def get(self, leaf_indices: ArrayLike) -> np.ndarray:
        idx = _check_indices("leaf_indices", leaf_indices, self._capacity)
        return self._tree[idx + self._n_leaves]

    def update(self, leaf_indices: ArrayLike, priorities: ArrayLike) -> None:
        """Set leaf priorities; when an index repeats, its last priority wins (as in a loop)."""
        idx = _check_indices("leaf_indices", leaf_indices, self._capacity)
        p = _check_values("priorities", priorities, idx.shape[0], nonnegative=True)
        self._update(idx, p)

    def _update(self, idx: np.ndarray, p: np.ndarray) -> None:
        """`update` on checked int64 indices and float64 priorities of the same length."""
        if idx.size == 0:
            return
        # np.unique returns the first occurrence; on the reversed arrays that is the last write.
        uniq, first_in_reversed = np.unique(idx[::-1], return_index=True)
        nodes = uniq + self._n_leaves
        self._tree[nodes] = p[::-1][first_in_reversed]
        tree = self._tree
        for _ in range(self._depth):
            # `nodes` is sorted and stays sorted under >> 1, so the parents' duplicates are
            # adjacent: dropping them needs one comparison, not another sort (np.unique).
            nodes >>= 1
            if nodes.size > 1:
                keep = np.empty(nodes.size, dtype=bool)
                keep[0] = True
                np.not_equal(nodes[1:], nodes[:-1], out=keep[1:])
                nodes = nodes[keep]
            left = nodes << 1
            tree[nodes] = tree[left] + tree[left + 1]

    def find(self, values: ArrayLike) -> np.ndarray:
        """Leaf of each cumulative-priority value, all values descending level by level together.

        Values are clamped into [0, total), and the descent never steps into a zero-sum subtree:
        with round-off, `v - left` can exceed the right sum and would otherwise reach an empty
        (zero-priority) leaf, which the reference can return (infinite IS weight).
        """
        v = np.asarray(values, dtype=np.float64)
        if v.ndim != 1:
            raise ValueError(f"values must be 1-D, got shape {v.shape}")
        if not np.isfinite(v).all():
            raise ValueError("values must be finite, got NaN/Inf")
        total = self.total
        if not total > 0.0:
            raise ValueError(f"cannot draw from a sum tree whose total priority is {total}")
        v = np.clip(v, 0.0, np.nextafter(total, 0.0))
        tree = self._tree
        node = np.ones(v.shape, dtype=np.int64)
        for _ in range(self._depth):
            left = node << 1
            left_sum = tree[left]
            go_right = (v >= left_sum) & (tree[left + 1] > 0.0)
            # v - 0.0 is exactly v: the same values as np.where, in fewer passes.
            v -= left_sum * go_right
            node = left + go_right
        return node - self._n_leaves


# ---------------------------------------------------------------------------------------------
# One prioritized buffer
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _BufferState:
    """A validated state, applied only once every part of a load has been checked."""

    x: np.ndarray
    tree: SumTree
    ptr: int
    size: int
    beta: float


class PrioritizedBuffer:
    """FIFO ring of float32 rows with proportional prioritized sampling.

    New rows enter at priority 1, the largest `min(err + eps, 1) ** alpha` can be, so every row is
    drawn soon after it arrives. The IS weights use N = capacity as the reference does; N cancels
    in the batch-max normalisation, so they are computed as `(p_min / p_i) ** beta`, which is the
    same quantity without overflow.
    """

    def __init__(
        self,
        capacity: int,
        dim: int,
        *,
        alpha: float,
        beta0: float,
        beta_increment: float = 1e-3,
        eps: float = 0.01,
        rng: np.random.Generator,
    ) -> None:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng)}")
        self._capacity = _check_count("capacity", capacity)
        self._dim = _check_count("dim", dim)
        self._alpha = _check_real("alpha", alpha, 0.0)
        self._beta = min(1.0, _check_real("beta0", beta0, 0.0))
        self._beta_increment = _check_real("beta_increment", beta_increment, 0.0)
        # eps > 0 keeps every row drawable: a perfectly classified row must not vanish.
        self._eps = _check_real("eps", eps, 0.0, strict=True)
        self._rng = rng
        self._x = np.zeros((self._capacity, self._dim), dtype=np.float32)
        self._tree = SumTree(self._capacity)
        self._ptr = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def alpha(self) -> float:
        return self._alpha

    @property
    def beta(self) -> float:
        return self._beta

    def add(self, x_ND: ArrayLike) -> np.ndarray:
        """Append rows, overwriting the oldest once full; returns the slot of each input row."""
        x = _check_rows("x_ND", x_ND, self._dim)
        n = x.shape[0]
        indices = (self._ptr + np.arange(n, dtype=np.int64)) % self._capacity
        keep = min(n, self._capacity)  # of more rows than slots, only the newest survive
        self._x[indices[n - keep :]] = x[n - keep :]
        self._tree.update(indices[n - keep :], np.ones(keep))
        self._ptr = int((self._ptr + n) % self._capacity)
        self._size = min(self._capacity, self._size + n)
        return indices

    def latest(self, n: int) -> np.ndarray:
        """Copy of the `n` most recently added rows (fewer if the buffer holds fewer); no RNG."""
        n = min(max(n, 0), self._size)
        slots = (self._ptr - n + np.arange(n, dtype=np.int64)) % self._capacity
        return self._x[slots].copy()

    def sample(self, batch_size: int) -> PrioritizedSample:
        """Stratified draw: one uniform value in each of `batch_size` equal priority segments."""
        batch = _check_count("batch_size", batch_size)
        if self._size == 0:
            raise ValueError("cannot sample from an empty buffer (0 rows); add rows first")
        self._beta = min(1.0, self._beta + self._beta_increment)
        segment = self._tree.total / batch
        values = (np.arange(batch) + self._rng.random(batch)) * segment
        leaves = np.minimum(self._tree.find(values), self._size - 1)
        p = self._tree.get(leaves)
        weights = (p.min() / p) ** self._beta
        return PrioritizedSample(
            x_BD=self._x[leaves],
            indices_B=leaves.astype(np.int64),
            weights_B=weights.astype(np.float32),
            source_B=np.zeros(batch, dtype=np.int64),
        )

    def update_priorities(self, indices_B: ArrayLike, d_train_B: ArrayLike) -> None:
        """Re-prioritise sampled rows from the discriminator output of the same forward pass."""
        idx, p = self._priorities_for(indices_B, d_train_B)
        self._tree._update(idx, p)

    def priorities(self) -> np.ndarray:
        """Priorities of the filled slots, in slot order."""
        return self._tree.leaves[: self._size]

    def _priorities_for(
        self, indices_B: ArrayLike, d_train_B: ArrayLike
    ) -> tuple[np.ndarray, np.ndarray]:
        idx = _check_indices("indices_B", indices_B, self._size)
        d = _check_values("d_train_B", d_train_B, idx.shape[0])
        return idx, np.minimum(np.abs(1.0 - d) + self._eps, 1.0) ** self._alpha

    def state_dict(self, *, include_rng: bool = True) -> StateDict:
        """Copies of the filled rows and priorities plus scalars; `include_rng=False` lets an owner
        that shares one generator among buffers store its state once."""
        sd: StateDict = {
            "capacity": self._capacity,
            "dim": self._dim,
            "alpha": self._alpha,
            "eps": self._eps,
            "beta_increment": self._beta_increment,
            "beta": self._beta,
            "ptr": self._ptr,
            "size": self._size,
            "x": self._x[: self._size].copy(),
            "priorities": self.priorities(),
        }
        if include_rng:
            sd[_RNG_KEY] = _rng_state_json(self._rng)
        return sd

    def load_state_dict(self, sd: Mapping[str, object]) -> None:
        """Restore exactly (the generator too if `sd` has its state); on error nothing changes."""
        parsed = self._parse_state(sd)
        rng_state = _parse_rng_state(self._rng, sd[_RNG_KEY]) if _RNG_KEY in sd else None
        if rng_state is not None:
            self._rng.bit_generator.state = rng_state
        self._apply_state(parsed)

    def _parse_state(self, sd: Mapping[str, object]) -> _BufferState:
        expected: dict[str, float] = {
            "capacity": self._capacity,
            "dim": self._dim,
            "alpha": self._alpha,
            "eps": self._eps,
            "beta_increment": self._beta_increment,
        }
        for key, want in expected.items():
            got = _sd_float(sd, key)
            if got != want:
                raise ValueError(f"state_dict[{key!r}] = {got} does not match this buffer's {want}")
        size, ptr, beta = _sd_int(sd, "size"), _sd_int(sd, "ptr"), _sd_float(sd, "beta")
        if size > self._capacity:
            raise ValueError(f"state_dict['size'] must be <= {self._capacity}, got {size}")
        want_ptr = size % self._capacity if size < self._capacity else None
        if ptr >= self._capacity or (want_ptr is not None and ptr != want_ptr):
            raise ValueError(f"state_dict['ptr'] = {ptr} is inconsistent with size {size}")
        if beta > 1.0:
            raise ValueError(f"state_dict['beta'] must be <= 1, got {beta}")
        x = _check_rows("state_dict['x']", _sd_get(sd, "x"), self._dim)
        if x.shape[0] != size:
            raise ValueError(
                f"state_dict['x'] must have shape ({size}, {self._dim}), got {x.shape}"
            )
        p = _check_values(
            "state_dict['priorities']", _sd_get(sd, "priorities"), size, nonnegative=True
        )
        full_x = np.zeros((self._capacity, self._dim), dtype=np.float32)
        full_x[:size] = x
        tree = SumTree(self._capacity)
        tree.update(np.arange(size), p)
        return _BufferState(x=full_x, tree=tree, ptr=ptr, size=size, beta=beta)

    def _apply_state(self, state: _BufferState) -> None:
        self._x, self._tree = state.x, state.tree
        self._ptr, self._size, self._beta = state.ptr, state.size, state.beta


# ---------------------------------------------------------------------------------------------
# Expert + pseudo-expert replay
# ---------------------------------------------------------------------------------------------
