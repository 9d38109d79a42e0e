"""numpy <-> sd2ail.v1.Tensor: exact round trips and precise refusals."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sd2ail_reward.convert import (
    TensorError,
    decode_matrix,
    decode_reward,
    decode_vector,
    to_tensor,
)
from sd2ail_reward.rpc import reward_pb2


def tensor(shape: list[int], data: bytes) -> reward_pb2.Tensor:
    return reward_pb2.Tensor(shape=shape, data=data)


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 64), st.integers(1, 17)),
        elements=st.floats(allow_nan=False, allow_infinity=False, width=32),
    )
)
def test_matrix_round_trip_is_bit_exact(array: np.ndarray) -> None:
    msg = to_tensor(array)
    assert list(msg.shape) == list(array.shape)
    assert len(msg.data) == array.size * 4
    out = decode_matrix(msg, "obs", array.shape[1])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, array)


def test_to_tensor_writes_little_endian_row_major() -> None:
    big_endian_fortran = np.asfortranarray(np.arange(6, dtype=">f4").reshape(2, 3))
    msg = to_tensor(big_endian_fortran)
    assert msg.data == np.arange(6, dtype="<f4").tobytes()
    assert list(msg.shape) == [2, 3]


def test_to_tensor_casts_float64_and_lists() -> None:
    msg = to_tensor([[0.5, 1.5]])
    np.testing.assert_array_equal(decode_matrix(msg, "obs", 2), [[0.5, 1.5]])


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        (None, r"obs: required"),
        (tensor([3], b"\0" * 12), r"obs: expected shape \[B, 3\], got \[3\] \(1 dims\)"),
        (tensor([1, 1, 3], b"\0" * 12), r"got \[1, 1, 3\] \(3 dims\)"),
        (tensor([2, 4], b"\0" * 32), r"expected shape \[B, 3\], got \[2, 4\]"),
        (tensor([2, 3], b"\0" * 20), r"20 bytes of data for shape \[2, 3\], expected 24"),
        (tensor([2, 3], b"\0" * 25), r"25 bytes .* expected 24"),
        (tensor([0, 3], b""), r"at least one row, got an empty batch"),
        (tensor([-1, 3], b""), r"negative dimension"),
        (tensor([9, 3], b"\0" * 108), r"9 rows exceeds the server's limit of 8"),
    ],
)
def test_decode_matrix_refuses_with_a_precise_message(
    msg: reward_pb2.Tensor | None, match: str
) -> None:
    with pytest.raises(TensorError, match=match):
        decode_matrix(msg, "obs", 3, max_rows=8)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_decode_matrix_refuses_non_finite_values(bad: float) -> None:
    array = np.zeros((4, 3), np.float32)
    array[2, 1] = bad
    with pytest.raises(TensorError, match=r"obs: expected finite values, got NaN or Inf in 1 row"):
        decode_matrix(to_tensor(array), "obs", 3)


def test_tensor_error_is_a_value_error() -> None:
    assert issubclass(TensorError, ValueError)


def test_decode_matrix_returns_a_read_only_view() -> None:
    out = decode_matrix(to_tensor(np.ones((2, 3))), "obs", 3)
    assert not out.flags.writeable  # a view of the message's bytes: never written through


def test_decode_vector_accepts_b_and_b_by_1() -> None:
    np.testing.assert_array_equal(decode_vector(to_tensor([1.0, 0.0]), "done", 2), [1.0, 0.0])
    np.testing.assert_array_equal(decode_vector(to_tensor([[1.0], [0.0]]), "done", 2), [1, 0])
    with pytest.raises(TensorError, match=r"done: expected 3 values to match obs, got 2"):
        decode_vector(to_tensor([1.0, 0.0]), "done", 3)
    with pytest.raises(TensorError, match=r"done: expected shape \[2\]"):
        decode_vector(to_tensor(np.zeros((2, 2))), "done", 2)
    with pytest.raises(TensorError, match="finite"):
        decode_vector(to_tensor([np.nan, 0.0]), "done", 2)


def test_decode_reward_is_writable_float32() -> None:
    out = decode_reward(to_tensor(np.array([1.0, -2.5], np.float32)))
    assert out.dtype == np.float32 and out.flags.writeable
    np.testing.assert_array_equal(out, [1.0, -2.5])
