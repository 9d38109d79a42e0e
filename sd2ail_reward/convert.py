"""numpy <-> `sd2ail.v1.Tensor` (raw little-endian float32 bytes + shape), with validation.

Pure data conversion: no gRPC, no torch. Decoding checks, in this order, that the tensor is
present, that its shape is the expected one, that the byte length matches the shape exactly
(before any bytes are interpreted, as Triton's "input byte size mismatch" check), the row limit,
and that every value is finite. Every failure is a `TensorError` (a ValueError) whose message
names the field, what was expected and what was received.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from sd2ail_reward.rpc import reward_pb2

__all__ = [
    "WIRE_DTYPE",
    "TensorError",
    "decode_matrix",
    "decode_reward",
    "decode_vector",
    "to_tensor",
]

WIRE_DTYPE = np.dtype("<f4")
"""Element type on the wire: little-endian IEEE-754 float32."""
_ITEMSIZE = WIRE_DTYPE.itemsize

F32 = npt.NDArray[np.float32]


class TensorError(ValueError):
    """A tensor field is missing or malformed; the message says which and how."""


def to_tensor(array: npt.ArrayLike) -> reward_pb2.Tensor:
    """Encode an array as a Tensor message (float32, little-endian, row-major)."""
    arr = np.ascontiguousarray(array, dtype=WIRE_DTYPE)
    return reward_pb2.Tensor(shape=arr.shape, data=arr.tobytes())


def _shape_str(shape: object) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"  # type: ignore[attr-defined]


def _decode(
    msg: reward_pb2.Tensor | None, name: str, expected: str, ndim: int
) -> tuple[list[int], bytes]:
    if msg is None:
        raise TensorError(f"{name}: required, got none (send a {expected} float32 tensor)")
    shape = list(msg.shape)
    if len(shape) != ndim:
        raise TensorError(
            f"{name}: expected shape {expected}, got {_shape_str(shape)} ({len(shape)} dims)"
        )
    if any(d < 0 for d in shape):
        raise TensorError(f"{name}: shape {_shape_str(shape)} has a negative dimension")
    data = msg.data
    want = math.prod(shape) * _ITEMSIZE
    if len(data) != want:
        raise TensorError(
            f"{name}: {len(data)} bytes of data for shape {_shape_str(shape)}, expected "
            f"{want} (4 bytes per little-endian float32 value)"
        )
    return shape, data


def _finite(name: str, array: F32) -> F32:
    if not np.isfinite(array).all():
        bad = ~np.isfinite(array)
        rows = int(bad.any(axis=1).sum()) if array.ndim == 2 else int(bad.sum())
        raise TensorError(f"{name}: expected finite values, got NaN or Inf in {rows} row(s)")
    return array


def _as_native(array: np.ndarray) -> F32:
    return array if array.dtype == np.float32 else array.astype(np.float32)


def decode_matrix(
    msg: reward_pb2.Tensor | None, name: str, cols: int, *, max_rows: int | None = None
) -> F32:
    """A [B, cols] tensor as a read-only float32 (B, cols) array with 1 <= B <= max_rows and
    only finite values, or TensorError."""
    shape, data = _decode(msg, name, f"[B, {cols}]", 2)
    rows, got_cols = shape
    if got_cols != cols:
        raise TensorError(f"{name}: expected shape [B, {cols}], got {_shape_str(shape)}")
    if rows == 0:
        raise TensorError(f"{name}: expected at least one row, got an empty batch")
    if max_rows is not None and rows > max_rows:
        raise TensorError(
            f"{name}: batch of {rows} rows exceeds the server's limit of {max_rows} "
            "(GetInfo.max_request_rows); split it into several requests"
        )
    array = np.frombuffer(data, dtype=WIRE_DTYPE).reshape(rows, cols)
    return _finite(name, _as_native(array))


def decode_vector(msg: reward_pb2.Tensor | None, name: str, rows: int) -> F32:
    """A [rows] tensor (a [rows, 1] one is accepted too) as a finite float32 (rows,) array."""
    if msg is not None and len(msg.shape) == 2 and msg.shape[1] == 1:
        shape, data = _decode(msg, name, f"[{rows}]", 2)
    else:
        shape, data = _decode(msg, name, f"[{rows}]", 1)
    if shape[0] != rows:
        raise TensorError(f"{name}: expected {rows} values to match obs, got {shape[0]}")
    array = np.frombuffer(data, dtype=WIRE_DTYPE).reshape(rows)
    return _finite(name, _as_native(array))


def decode_reward(msg: reward_pb2.Tensor) -> F32:
    """A reward tensor from a response as a writable float32 (B,) array."""
    shape, data = _decode(msg, "reward", "[B]", 1)
    return np.frombuffer(data, dtype=WIRE_DTYPE).astype(np.float32, copy=True).reshape(shape)
