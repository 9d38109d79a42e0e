"""RewardClient: deadlines, retries on UNAVAILABLE only, fork safety, pickling, errors."""

from __future__ import annotations

import inspect
import multiprocessing
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest_server import probe_batch, small_learner, start_inprocess

from sd2ail_reward import client as client_module
from sd2ail_reward.client import (
    RewardClient,
    RewardInvalidArgumentError,
    RewardServiceError,
    ServerInfo,
)
from sd2ail_reward.learner import RewardLearner, RewardModel

Code = grpc.StatusCode


@pytest.fixture(scope="module")
def served(demo_store: Path) -> Iterator[tuple[Any, RewardLearner]]:
    learner = small_learner(demo_store)
    server = start_inprocess(learner, train=False)
    yield server, learner
    server.stop(grace_s=0.0)


def address(server: Any) -> str:
    return f"127.0.0.1:{server.port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CountingStub:
    """Wraps a stub; counts calls per method."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.real, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return method(*args, **kwargs)

        return call


def test_reward_has_the_learner_signature() -> None:
    mine = inspect.signature(RewardClient.reward).parameters
    theirs = inspect.signature(RewardLearner.reward).parameters
    assert list(mine) == list(theirs)
    assert mine["next_obs"].default is None


def test_reward_equals_the_learner_and_returns_writable_float32(
    served: tuple[Any, RewardLearner],
) -> None:
    server, learner = served
    obs, act, nxt = probe_batch(33, seed=1)
    with RewardClient(address(server)) as client:
        got = client.reward(obs.tolist(), act.tolist(), nxt)  # lists are fine too
        info = client.info()
    assert isinstance(info, ServerInfo) and info.ready
    assert got.dtype == np.float32 and got.flags.writeable and got.shape == (33,)
    assert np.max(np.abs(got - learner.reward(obs, act, nxt))) <= 1e-6


def test_unavailable_is_retried_with_backoff_then_raised(monkeypatch: pytest.MonkeyPatch):
    sleeps: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", sleeps.append)
    client = RewardClient(
        f"127.0.0.1:{free_port()}", timeout_s=2.0, max_retries=4, backoff_s=0.1, backoff_max_s=0.3
    )
    with pytest.raises(RewardServiceError) as err:
        client.reward(*probe_batch(2, seed=0)[:2])
    assert err.value.code == Code.UNAVAILABLE
    assert len(sleeps) == 4
    assert all(0.05 <= s <= 0.3 for s in sleeps)  # jittered, doubling, capped
    assert sleeps[-1] > sleeps[0] * 1.2 or sleeps[-1] >= 0.15


def test_other_errors_are_not_retried(served: tuple[Any, RewardLearner]) -> None:
    server, _ = served
    client = RewardClient(address(server), max_retries=5)
    counting = CountingStub(client._ensure_process())
    client._stub = counting
    with pytest.raises(RewardInvalidArgumentError) as err:
        client.reward(np.zeros((2, 4), np.float32), np.zeros((2, 1), np.float32))
    assert isinstance(err.value, ValueError) and err.value.code == Code.INVALID_ARGUMENT
    assert "obs: expected shape [B, 3]" in str(err.value)
    assert counting.calls == {"ComputeReward": 1}


def test_every_call_has_a_deadline(demo_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = start_inprocess(small_learner(demo_store), train=False)
    try:
        score = RewardModel.reward_rows

        def slow(model: RewardModel, x: np.ndarray) -> np.ndarray:
            time.sleep(1.0)
            return score(model, x)

        monkeypatch.setattr(RewardModel, "reward_rows", slow)
        client = RewardClient(address(server), timeout_s=0.2)
        t0 = time.monotonic()
        with pytest.raises(RewardServiceError) as err:
            client.reward(*probe_batch(2, seed=0)[:2])
        assert err.value.code == Code.DEADLINE_EXCEEDED
        assert time.monotonic() - t0 < 0.9  # not retried, not waiting for the slow model
    finally:
        server.stop(grace_s=0.0)


def test_wait_ready_times_out_without_a_server() -> None:
    client = RewardClient(f"127.0.0.1:{free_port()}", timeout_s=0.2)
    assert client.health() == "UNREACHABLE"
    with pytest.raises(TimeoutError, match="not SERVING"):
        client.wait_ready(timeout_s=0.5)


def test_pickle_drops_the_channel_and_gets_a_new_identity(
    served: tuple[Any, RewardLearner],
) -> None:
    server, _learner = served
    client = RewardClient(address(server), token=None, timeout_s=3.0, client_id="fixed-id")
    obs, act, _ = probe_batch(5, seed=2)
    first = client.reward(obs, act)
    copy = pickle.loads(pickle.dumps(client))
    assert copy._channel is None and copy.timeout_s == 3.0
    assert copy.client_id != client.client_id == "fixed-id"
    np.testing.assert_array_equal(copy.reward(obs, act), first)
    np.testing.assert_array_equal(client.reward(obs, act), first)  # the original still works


def _child(client: RewardClient, queue: Any) -> None:
    obs, act, nxt = probe_batch(6, seed=3)
    try:
        rewards = client.reward(obs, act)
        pushed = client.push(obs, act, nxt)
        queue.put(("ok", rewards, pushed, client.client_id))
    except Exception as err:  # report to the parent instead of dying silently
        queue.put(("error", repr(err), 0, ""))


def test_client_created_before_fork_works_in_the_child(served: tuple[Any, Any]) -> None:
    server, _learner = served
    client = RewardClient(address(server))
    obs, act, nxt = probe_batch(6, seed=3)
    parent_rewards = client.reward(obs, act)  # the parent's channel exists before the fork
    assert client.push(obs, act, nxt) == 6
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(client, queue))
    child.start()
    status, rewards, pushed, child_id = queue.get(timeout=60)
    child.join(30)
    assert status == "ok", rewards
    np.testing.assert_array_equal(rewards, parent_rewards)
    assert pushed == 6, "the child's first push must not collide with the parent's sequence 1"
    assert child_id != client.client_id
    np.testing.assert_array_equal(client.reward(obs, act), parent_rewards)  # parent still fine


def test_concurrent_pushes_from_threads_get_distinct_sequences(
    served: tuple[Any, RewardLearner],
) -> None:
    server, _ = served
    client = RewardClient(address(server))
    before = server.metrics.push_rows
    results: list[int] = []

    def push(seed: int) -> None:
        results.append(client.push(*probe_batch(3, seed=seed)))

    threads = [threading.Thread(target=push, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == [3] * 8
    assert server.metrics.push_rows - before == 24


def test_token_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SD2AIL_REWARD_TOKEN", "from-env-0123456789abcdef")
    assert RewardClient("127.0.0.1:1")._metadata == (
        ("authorization", "Bearer from-env-0123456789abcdef"),
    )
    assert (
        RewardClient("127.0.0.1:1", token="given-0123456789abcdef")
        ._metadata[0][1]
        .endswith("given-0123456789abcdef")
    )


def test_stats_sync_and_close(served: tuple[Any, RewardLearner]) -> None:
    server, _ = served
    client = RewardClient(address(server))
    client.reward(*probe_batch(2, seed=0)[:2])
    stats = client.stats()
    assert isinstance(stats["serving"]["errors_by_code"], dict)
    assert isinstance(stats["serving"]["batch_rows_histogram"], list)
    assert client.sync(timeout_s=10)["updates"] == 0  # reward-only server: nothing to train
    client.close()
    assert client._channel is None
    assert client.reward(*probe_batch(2, seed=0)[:2]).shape == (2,)  # reopens lazily


def test_invalid_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        RewardClient("127.0.0.1:1", timeout_s=0)
    with pytest.raises(ValueError, match="max_retries"):
        RewardClient("127.0.0.1:1", max_retries=-1)


def test_first_reward_waits_for_a_server_that_is_still_loading(
    demo_store: Path, tmp_path: Path
) -> None:
    """The user's first step right after `serve` printed its port: the server is still loading
    (health NOT_SERVING), and the client's first call waits for SERVING within its deadline
    instead of failing with FAILED_PRECONDITION."""
    from conftest_server import SMALL_FLAGS

    from sd2ail_reward.spawn import spawn_server

    flags = ["--demos", str(demo_store), *SMALL_FLAGS]
    with spawn_server(flags, log_path=tmp_path / "server.log", wait_ready=False) as server:
        client = server.client(timeout_s=60.0, max_retries=0)
        assert client.health() == "NOT_SERVING"  # loading demos and warming up
        obs, act, nxt = probe_batch(4, seed=0)
        rewards = client.reward(obs, act, nxt)
        assert rewards.shape == (4,) and np.isfinite(rewards).all()
        assert client.health() == "SERVING"
        assert client.push(obs, act, nxt) == 4  # later calls need no wait
        client.close()
    assert server.returncode == 0
