"""The reward server: correctness of served rewards, batching isolation, validation, auth,
idempotent pushes, training/sync, checkpoints under SIGTERM and kill -9, health.

Fast tests run `build_server` in process on 127.0.0.1:0; process-level tests run
`python -m sd2ail_reward.cli serve ... --port 0` as a subprocess. Models are tiny (2-core CI).
"""

from __future__ import annotations

import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest_server import (
    REPO,
    SMALL_FLAGS,
    probe_batch,
    small_config_for,
    small_learner,
    start_inprocess,
    wait_serving,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sd2ail_reward.checkpoint import CheckpointStore
from sd2ail_reward.client import RewardClient, RewardInvalidArgumentError, RewardServiceError
from sd2ail_reward.convert import to_tensor
from sd2ail_reward.demos import read_demos
from sd2ail_reward.learner import RewardLearner, RewardModel
from sd2ail_reward.rpc import reward_pb2, reward_pb2_grpc
from sd2ail_reward.server import ServeOptions, build_server, is_loopback, load_tokens
from sd2ail_reward.server.options import check_options

TOL = 1e-6
MAX_ROWS = 256
MAX_MESSAGE = 64 << 10
Code = grpc.StatusCode


def stub_for(address: str) -> tuple[grpc.Channel, reward_pb2_grpc.RewardServiceStub]:
    channel = grpc.insecure_channel(address)
    return channel, reward_pb2_grpc.RewardServiceStub(channel)


def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    """Run `call()`; return its status code (OK when it succeeded) and details."""
    try:
        call()
    except grpc.RpcError as err:
        return err.code(), err.details() or ""
    return Code.OK, ""


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def frozen(demo_store: Path) -> Iterator[tuple[Any, RewardLearner]]:
    """A reward-only server (weights fixed) with small limits and batching on."""
    learner = small_learner(demo_store)
    server = start_inprocess(
        learner,
        train=False,
        max_queue_delay_ms=2.0,
        max_request_rows=MAX_ROWS,
        max_message_bytes=MAX_MESSAGE,
    )
    yield server, learner
    server.stop(grace_s=0.0)


@pytest.fixture
def trainer(demo_store: Path) -> Iterator[tuple[Any, RewardLearner]]:
    """A fresh training server (min_agent_size 32, 1 update per pushed transition)."""
    learner = small_learner(demo_store)
    server = start_inprocess(learner, publish_every=5)
    yield server, learner
    server.stop(grace_s=0.0)


def address(server: Any) -> str:
    return f"127.0.0.1:{server.port}"


# ------------------------------------------------------------------------------ rewards


def test_served_reward_equals_inprocess_learner_reward(
    demo_store: Path, serve_process: Any, tmp_path: Path
) -> None:
    """A real `serve` process: same weights -> same rewards (<= 1e-6), before and after
    training (the trained weights come back through a checkpoint it wrote)."""
    proc_dir = tmp_path / "ckpt"
    proc = serve_process(
        "--demos", str(demo_store), *SMALL_FLAGS,
        "--checkpoint-dir", str(proc_dir), "--checkpoint-every", "0",
    )  # fmt: skip
    client = proc.client()
    wait_serving(client)
    obs, act, next_obs = probe_batch(300, seed=11)
    served = client.reward(obs, act, next_obs)
    assert client.last_model_version == 0
    local = small_learner(demo_store).reward(obs, act, next_obs)
    assert served.dtype == np.float32 and served.shape == (300,)
    assert np.max(np.abs(served - local)) <= TOL

    for k in range(3):
        assert client.push(*probe_batch(40, seed=100 + k)) == 40
    synced = client.sync(timeout_s=120)
    assert synced["updates"] == 120 - 32 + 1  # the k-th pushed row trains once k >= 32
    saved = client.checkpoint()
    served = client.reward(obs, act, next_obs)
    assert client.last_model_version == saved["step"] == synced["model_version"]
    ckpt = CheckpointStore(proc_dir).load_latest()
    learner = RewardLearner(
        RewardLearner.config_from_state(ckpt.state), read_demos(demo_store), seed=0
    )
    learner.load_state_dict(ckpt.state)
    assert np.max(np.abs(served - learner.reward(obs, act, next_obs))) <= TOL
    assert proc.terminate() == 0


def _omp_max_threads() -> int | None:
    """omp_get_max_threads() of the calling thread; None without torch's GNU OpenMP runtime."""
    import ctypes
    import glob
    import os

    import torch

    libs = glob.glob(os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp*.so*"))
    return int(ctypes.CDLL(libs[0]).omp_get_max_threads()) if libs else None


@pytest.mark.parametrize("batching", [True, False])
def test_handler_threads_use_the_servers_torch_thread_count(
    demo_store: Path, monkeypatch: pytest.MonkeyPatch, batching: bool
) -> None:
    """OpenMP's thread count is per thread: a handler thread that never set it scores with one
    OpenMP thread per core (15 to 28 ms instead of 0.5 ms for batch 1 on a busy 2-core
    machine), while torch.get_num_threads() still reports the main thread's 1."""
    import os

    import torch

    if _omp_max_threads() is None or (os.cpu_count() or 1) < 2:
        pytest.skip("needs torch with GNU OpenMP on >= 2 cores")
    seen: list[int | None] = []
    score = RewardModel.reward_rows

    def spy(model: RewardModel, x: np.ndarray) -> np.ndarray:
        seen.append(_omp_max_threads())
        return score(model, x)

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        server = start_inprocess(small_learner(demo_store), train=False, batching=batching)
        monkeypatch.setattr(RewardModel, "reward_rows", spy)  # served requests only
        try:
            with RewardClient(address(server)) as client:
                for seed in range(4):
                    client.reward(*probe_batch(3, seed=seed)[:2])
        finally:
            server.stop(grace_s=0.0)
    finally:
        torch.set_num_threads(before)
    assert len(seen) == 4 and set(seen) == {1}


def test_info_and_stats_describe_the_server(frozen: tuple[Any, RewardLearner]) -> None:
    server, _ = frozen
    with RewardClient(address(server)) as client:
        info = client.info()
        assert (info.env_id, info.algo, info.obs_dim, info.act_dim) == (
            "Pendulum-v1",
            "sd2ail",
            3,
            1,
        )
        assert info.ready and not info.training and not info.requires_next_obs
        assert info.max_request_rows == MAX_ROWS and info.max_message_bytes == MAX_MESSAGE
        assert info.action_low == (-2.0,) and info.action_high == (2.0,)
        client.reward(*probe_batch(4, seed=0)[:2])
        stats = client.stats()
    assert "d_reward/expert" in stats["learner"] and "buffer/agent" in stats["learner"]
    serving = stats["serving"]
    assert serving["reward_requests"] >= 1 and serving["batches"] >= 1
    assert serving["batch_rows_histogram"] and serving["uptime_s"] > 0


def test_concurrent_clients_get_exactly_their_own_rewards(
    frozen: tuple[Any, RewardLearner],
) -> None:
    """16 clients with different batch sizes, one more sending malformed requests at the same
    time: every honest caller gets its own rewards, and requests were really batched."""
    server, learner = frozen
    before = RewardClient(address(server)).stats()["serving"]
    sizes = [1, 1, 2, 3, 4, 5, 7, 8, 13, 16, 31, 32, 50, 64, 100, 128]
    errors: list[str] = []
    bad_codes: list[grpc.StatusCode] = []
    start = threading.Barrier(len(sizes) + 1)

    def honest(i: int, batch: int) -> None:
        client = RewardClient(address(server))
        start.wait()
        for r in range(12):
            obs, act, _ = probe_batch(batch, seed=1000 * i + r)
            got = client.reward(obs, act)
            want = learner.reward(obs, act)
            if got.shape != (batch,) or np.max(np.abs(got - want)) > TOL:
                errors.append(f"client {i} request {r}: wrong rewards")

    def liar() -> None:
        channel, stub = stub_for(address(server))
        start.wait()
        rng = np.random.default_rng(7)
        for r in range(24):
            obs, act, _ = probe_batch(8, seed=r)
            bad = reward_pb2.Tensor(shape=[8, 3], data=obs.tobytes()[: -4 * (1 + r % 3)])
            if r % 2:  # shape claims more rows than the bytes hold
                bad = reward_pb2.Tensor(shape=[9, 3], data=obs.tobytes())
            if r % 5 == 0:
                obs[rng.integers(8), 0] = np.nan
                bad = to_tensor(obs)
            req = reward_pb2.ComputeRewardRequest(obs=bad, action=to_tensor(act))
            bad_codes.append(code_of(lambda req=req: stub.ComputeReward(req, timeout=10))[0])
        channel.close()

    threads = [threading.Thread(target=honest, args=(i, b)) for i, b in enumerate(sizes)]
    threads.append(threading.Thread(target=liar))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert bad_codes == [Code.INVALID_ARGUMENT] * 24
    after = RewardClient(address(server)).stats()["serving"]
    requests = after["reward_requests"] - before["reward_requests"]
    batches = after["batches"] - before["batches"]
    assert requests == 16 * 12
    assert batches < requests, "no two requests were ever batched together"
    assert max(b["upper"] for b in after["batch_requests_histogram"]) >= 2
    assert after["mean_batch_requests"] > 1.0


# ------------------------------------------------------------------------------ validation


def _obs(n: int = 4) -> reward_pb2.Tensor:
    return to_tensor(probe_batch(n, seed=3)[0])


def _act(n: int = 4) -> reward_pb2.Tensor:
    return to_tensor(probe_batch(n, seed=3)[1])


def _with_nan(array: np.ndarray, value: float) -> reward_pb2.Tensor:
    array = array.copy()
    array[-1, -1] = value
    return to_tensor(array)


BAD_REWARD_REQUESTS = {
    "missing obs": (reward_pb2.ComputeRewardRequest(action=_act()), "obs: required"),
    "missing action": (reward_pb2.ComputeRewardRequest(obs=_obs()), "action: required"),
    "obs feature dim": (
        reward_pb2.ComputeRewardRequest(obs=to_tensor(np.zeros((4, 2))), action=_act()),
        r"obs: expected shape [B, 3], got [4, 2]",
    ),
    "obs flat": (
        reward_pb2.ComputeRewardRequest(obs=to_tensor(np.zeros(12)), action=_act()),
        "obs: expected shape [B, 3], got [12]",
    ),
    "action 3-d": (
        reward_pb2.ComputeRewardRequest(obs=_obs(), action=to_tensor(np.zeros((4, 1, 1)))),
        "action: expected shape [B, 1]",
    ),
    "byte length short": (
        reward_pb2.ComputeRewardRequest(
            obs=reward_pb2.Tensor(shape=[4, 3], data=b"\0" * 44), action=_act()
        ),
        "44 bytes of data for shape [4, 3], expected 48",
    ),
    "byte length not a float multiple": (
        reward_pb2.ComputeRewardRequest(
            obs=_obs(), action=reward_pb2.Tensor(shape=[4, 1], data=b"\0" * 17)
        ),
        "17 bytes",
    ),
    "NaN obs": (
        reward_pb2.ComputeRewardRequest(obs=_with_nan(probe_batch(4, 3)[0], np.nan), action=_act()),
        "obs: expected finite values",
    ),
    "Inf action": (
        reward_pb2.ComputeRewardRequest(obs=_obs(), action=_with_nan(probe_batch(4, 3)[1], np.inf)),
        "action: expected finite values",
    ),
    "-Inf next_obs": (
        reward_pb2.ComputeRewardRequest(
            obs=_obs(), action=_act(), next_obs=_with_nan(probe_batch(4, 3)[0], -np.inf)
        ),
        "next_obs: expected finite values",
    ),
    "empty batch": (
        reward_pb2.ComputeRewardRequest(
            obs=to_tensor(np.zeros((0, 3))), action=to_tensor(np.zeros((0, 1)))
        ),
        "empty batch",
    ),
    "rows mismatch": (
        reward_pb2.ComputeRewardRequest(obs=_obs(4), action=_act(5)),
        "action: expected 4 rows to match obs, got 5",
    ),
    "batch over the limit": (
        reward_pb2.ComputeRewardRequest(obs=_obs(MAX_ROWS + 1), action=_act(MAX_ROWS + 1)),
        f"exceeds the server's limit of {MAX_ROWS}",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REWARD_REQUESTS))
def test_bad_reward_request_is_invalid_argument(
    frozen: tuple[Any, RewardLearner], case: str
) -> None:
    server, learner = frozen
    request, message = BAD_REWARD_REQUESTS[case]
    channel, stub = stub_for(address(server))
    code, details = code_of(lambda: stub.ComputeReward(request, timeout=10))
    assert code == Code.INVALID_ARGUMENT, (case, code, details)
    assert message in details, details
    obs, act, _ = probe_batch(16, seed=5)  # and the server still serves correct rewards
    got = RewardClient(address(server)).reward(obs, act)
    assert np.max(np.abs(got - learner.reward(obs, act))) <= TOL
    channel.close()


def test_client_raises_a_value_error_for_invalid_argument(frozen: tuple[Any, Any]) -> None:
    server, _ = frozen
    with RewardClient(address(server)) as client, pytest.raises(ValueError, match="obs"):
        client.reward(np.zeros((2, 5), np.float32), np.zeros((2, 1), np.float32))
    err = RewardInvalidArgumentError("ComputeReward", Code.INVALID_ARGUMENT, "x")
    assert isinstance(err, RewardServiceError) and err.code == Code.INVALID_ARGUMENT


def test_oversized_message_is_resource_exhausted(frozen: tuple[Any, RewardLearner]) -> None:
    server, learner = frozen
    rows = MAX_MESSAGE // 12 + 10  # obs alone is over the server's message limit
    request = reward_pb2.ComputeRewardRequest(
        obs=to_tensor(np.zeros((rows, 3))), action=to_tensor(np.zeros((rows, 1)))
    )
    channel, stub = stub_for(address(server))
    for _ in range(3):
        assert code_of(lambda: stub.ComputeReward(request, timeout=10))[0] == (
            Code.RESOURCE_EXHAUSTED
        )
    obs, act, _ = probe_batch(8, seed=9)
    got = RewardClient(address(server)).reward(obs, act)
    assert np.max(np.abs(got - learner.reward(obs, act))) <= TOL
    channel.close()


BAD_PUSHES = {
    "missing client_id": ({"client_id": "", "sequence": 1}, "client_id: required"),
    "client_id with spaces": ({"client_id": "a b", "sequence": 1}, "client_id: expected"),
    "sequence 0": ({"client_id": "c", "sequence": 0}, "sequence: expected >= 1"),
    "NaN obs": (
        {"client_id": "c", "sequence": 1, "obs": _with_nan(probe_batch(4, 3)[0], np.nan)},
        "obs: expected finite",
    ),
    "missing action": ({"client_id": "c", "sequence": 1, "action": None}, "action: required"),
}


@pytest.mark.parametrize("case", sorted(BAD_PUSHES))
def test_bad_push_is_invalid_argument_and_ingests_nothing(
    frozen: tuple[Any, RewardLearner], case: str
) -> None:
    server, _ = frozen
    fields, message = BAD_PUSHES[case]
    kwargs = {"obs": _obs(), "action": _act(), **fields}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    request = reward_pb2.PushTransitionsRequest(**kwargs)
    before = server.metrics.push_rows
    channel, stub = stub_for(address(server))
    code, details = code_of(lambda: stub.PushTransitions(request, timeout=10))
    assert code == Code.INVALID_ARGUMENT and message in details, (code, details)
    assert server.metrics.push_rows == before
    channel.close()


def _tensor_strategy(max_dims: int = 3) -> st.SearchStrategy[reward_pb2.Tensor]:
    """Tensors that are sometimes well formed and often not: any rank, any dims, byte lengths
    that match or miss the shape, values including NaN and +-Inf."""
    shapes = st.lists(st.integers(0, 5), min_size=0, max_size=max_dims)
    values = st.floats(width=32, allow_nan=True, allow_infinity=True)

    @st.composite
    def build(draw: st.DrawFn) -> reward_pb2.Tensor:
        shape = draw(shapes)
        n = int(np.prod(shape)) if shape else 1
        data = np.array(draw(st.lists(values, min_size=n, max_size=n)), np.float32).tobytes()
        cut = draw(st.sampled_from([0, 0, 0, -1, -4, 3, 4]))
        data = data[:cut] if cut < 0 else data + b"\x7f" * cut
        return reward_pb2.Tensor(shape=shape, data=data)

    return build()


def _well_formed(t: reward_pb2.Tensor, cols: int) -> int | None:
    """Rows of a valid [B, cols] tensor, else None."""
    shape = list(t.shape)
    if len(shape) != 2 or shape[1] != cols or not 1 <= shape[0] <= MAX_ROWS:
        return None
    if len(t.data) != 4 * shape[0] * cols:
        return None
    values = np.frombuffer(t.data, "<f4")
    return shape[0] if np.isfinite(values).all() else None


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(obs=_tensor_strategy(), act=_tensor_strategy())
def test_malformed_tensors_never_get_anything_but_invalid_argument(
    frozen: tuple[Any, RewardLearner], obs: reward_pb2.Tensor, act: reward_pb2.Tensor
) -> None:
    """Property: a request is answered OK with the learner's rewards iff both tensors are
    well formed with matching rows; otherwise INVALID_ARGUMENT, never UNKNOWN / INTERNAL."""
    server, learner = frozen
    channel, stub = stub_for(address(server))
    request = reward_pb2.ComputeRewardRequest(obs=obs, action=act)
    try:
        reply = stub.ComputeReward(request, timeout=10)
        code = Code.OK
    except grpc.RpcError as err:
        code = err.code()
    finally:
        channel.close()
    rows_obs, rows_act = _well_formed(obs, 3), _well_formed(act, 1)
    if rows_obs is not None and rows_obs == rows_act:
        assert code == Code.OK
        got = np.frombuffer(reply.reward.data, "<f4")
        want = learner.reward(
            np.frombuffer(obs.data, "<f4").reshape(-1, 3),
            np.frombuffer(act.data, "<f4").reshape(-1, 1),
        )
        assert np.max(np.abs(got - want)) <= TOL
    else:
        assert code == Code.INVALID_ARGUMENT


def slow_scoring(monkeypatch: pytest.MonkeyPatch, before: Callable[[], object]) -> None:
    """Every RewardModel calls `before()` first when it scores (a model that takes its time)."""
    score = RewardModel.reward_rows

    def slow(model: RewardModel, x: np.ndarray) -> np.ndarray:
        before()
        return score(model, x)

    monkeypatch.setattr(RewardModel, "reward_rows", slow)


def test_full_queue_answers_resource_exhausted_at_once(
    demo_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_inprocess(small_learner(demo_store), train=False, max_queue_size=1)
    gate, entered = threading.Event(), threading.Event()
    try:
        slow_scoring(monkeypatch, lambda: (entered.set(), gate.wait(10)))
        obs, act, _ = probe_batch(2, seed=1)
        results: list[Any] = []

        def call() -> None:
            try:
                results.append(RewardClient(address(server)).reward(obs, act))
            except RewardServiceError as err:
                results.append(err.code)

        busy = threading.Thread(target=call)  # being scored (blocked on the gate)
        busy.start()
        assert entered.wait(10)
        deadline = time.monotonic() + 10
        queued = threading.Thread(target=call)  # fills the one queue slot
        queued.start()
        while server.host.queue_depth() < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        t0 = time.monotonic()
        call()  # finds the queue full
        assert results[-1] == Code.RESOURCE_EXHAUSTED
        assert time.monotonic() - t0 < 2.0, "a full queue must answer at once"
        gate.set()
        busy.join(10)
        queued.join(10)
        assert sum(isinstance(r, np.ndarray) for r in results) == 2
    finally:
        gate.set()
        server.stop(grace_s=0.0)


def test_not_ready_is_failed_precondition_then_serving(
    demo_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While loading: health NOT_SERVING, FAILED_PRECONDITION to a raw call and to a client
    whose deadline passes first (saying the server was not ready, and why); a client call made
    while loading succeeds once the server is SERVING within its deadline."""
    import sd2ail_reward.server.host as host_module

    release = threading.Event()
    original = host_module.load_learner

    def slow_load(*args: Any) -> Any:
        release.wait(30)
        return original(*args)

    monkeypatch.setattr(host_module, "load_learner", slow_load)
    server, port = build_server(small_learner(demo_store), ServeOptions(port=0, log_every_s=0))
    try:
        address = f"127.0.0.1:{port}"
        client = RewardClient(address, max_retries=0, timeout_s=0.5)
        assert client.health() == "NOT_SERVING"
        assert client.info().ready is False
        channel, stub = stub_for(address)
        request = reward_pb2.ComputeRewardRequest(obs=_obs(), action=_act())
        code, details = code_of(lambda: stub.ComputeReward(request, timeout=10))
        assert code == Code.FAILED_PRECONDITION and "loading" in details
        channel.close()
        t0 = time.monotonic()
        with pytest.raises(RewardServiceError) as err:
            client.reward(*probe_batch(2, seed=0)[:2])
        assert err.value.code == Code.FAILED_PRECONDITION
        assert "not ready within the call's 0.5 s deadline" in err.value.details
        assert "still loading" in err.value.details  # the server's own reason
        assert time.monotonic() - t0 < 2.0  # within the call's deadline

        threading.Timer(0.5, release.set).start()
        patient = RewardClient(address, max_retries=0, timeout_s=30)
        assert patient.reward(*probe_batch(2, seed=0)[:2]).shape == (2,)
        assert client.info().ready and client.health() == "SERVING"
    finally:
        release.set()
        server.stop(grace_s=0.0)


def test_failed_load_reports_failed_precondition(tmp_path: Path) -> None:
    from sd2ail_reward.server import LearnerSpec

    spec = LearnerSpec(demos=tmp_path / "missing.zarr", config=small_config_for(tmp_path))
    server, port = build_server(spec, ServeOptions(port=0, log_every_s=0))
    try:
        assert not server.wait_ready(30)
        assert server.state == "failed"
        client = RewardClient(f"127.0.0.1:{port}", max_retries=0, timeout_s=1.0)
        with pytest.raises(RewardServiceError) as err:
            client.reward(*probe_batch(2, seed=0)[:2])
        assert err.value.code == Code.FAILED_PRECONDITION
        assert "not ready" in err.value.details and "failed to load" in err.value.details
        assert client.health() == "NOT_SERVING"
    finally:
        server.stop(grace_s=0.0)


# ------------------------------------------------------------------------------ auth


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "tokens"
    path.write_text(
        "# roles\nwrite write-token-0123456789abcdef\nread read-token-0123456789abcdef\n"
    )
    path.chmod(0o600)
    return path


def test_auth_unauthenticated_permission_denied_and_allowed(demo_store: Path, tokens: Path) -> None:
    server = start_inprocess(small_learner(demo_store), token_file=tokens)
    try:
        addr = address(server)
        obs, act, nxt = probe_batch(4, seed=2)
        anonymous = RewardClient(addr, max_retries=0)
        wrong = RewardClient(addr, token="not-a-token-0123456789", max_retries=0)
        reader = RewardClient(addr, token="read-token-0123456789abcdef", max_retries=0)
        writer = RewardClient(addr, token="write-token-0123456789abcdef", max_retries=0)
        for client in (anonymous, wrong):
            for call in (
                client.info,
                lambda c=client: c.reward(obs, act),
                lambda c=client: c.push(obs, act),
                client.stats,
                client.sync,
            ):
                with pytest.raises(RewardServiceError) as err:
                    call()
                assert err.value.code == Code.UNAUTHENTICATED
                assert "Bearer" in err.value.details
        assert anonymous.health() == "SERVING"  # health probes need no token
        assert reader.reward(obs, act).shape == (4,)
        assert reader.info().obs_dim == 3 and "learner" in reader.stats()
        for call in (lambda: reader.push(obs, act, nxt), reader.sync, reader.checkpoint):
            with pytest.raises(RewardServiceError) as err:
                call()
            assert err.value.code == Code.PERMISSION_DENIED
            assert "'write' role" in err.value.details
        assert writer.push(obs, act, nxt) == 4
        writer.sync(timeout_s=30)
        stats = writer.stats()["serving"]
        assert stats["errors_by_code"]["UNAUTHENTICATED"] >= 10
        assert stats["errors_by_code"]["PERMISSION_DENIED"] == 3
    finally:
        server.stop(grace_s=0.0)


def test_non_loopback_bind_is_refused_without_a_token(demo_store: Path, tokens: Path) -> None:
    learner = small_learner(demo_store)
    with pytest.raises(ValueError, match="without authentication"):
        build_server(learner, ServeOptions(host="0.0.0.0", port=0))
    with pytest.raises(ValueError, match="plaintext"):
        build_server(learner, ServeOptions(host="0.0.0.0", port=0, token_file=tokens))
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    # The command line refuses before binding anything, with exit status 2.
    done = subprocess.run(
        [sys.executable, "-m", "sd2ail_reward.cli", "serve", "--demos", str(demo_store),
         "--host", "0.0.0.0", "--port", "0", *SMALL_FLAGS],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "refusing to listen on non-loopback address" in done.stderr
    assert "SD2AIL_SERVER_PORT" not in done.stdout


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_tls_with_a_token(demo_store: Path, tokens: Path, tmp_path: Path) -> None:
    """TLS on loopback (a self-signed certificate for 127.0.0.1): a client that trusts it and
    sends a token is served; a plaintext client is not."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    learner = small_learner(demo_store)
    server = start_inprocess(learner, token_file=tokens, tls_cert=cert, tls_key=key)
    try:
        obs, act, _ = probe_batch(4, seed=8)
        secure = RewardClient(
            address(server), token="read-token-0123456789abcdef", root_certificates=cert
        )
        assert np.max(np.abs(secure.reward(obs, act) - learner.reward(obs, act))) <= TOL
        plaintext = RewardClient(
            address(server), token="read-token-0123456789abcdef", max_retries=0, timeout_s=2
        )
        with pytest.raises(RewardServiceError) as err:
            plaintext.reward(obs, act)
        assert err.value.code == Code.UNAVAILABLE
    finally:
        server.stop(grace_s=0.0)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "holds no tokens"),
        ("admin abcdefghijklmnopqrstuvwxyz\n", "role read or write"),
        ("write short\n", ">= 16"),
        ("write abcdefghijklmnopqrstuvwxyz\nread abcdefghijklmnopqrstuvwxyz\n", "listed twice"),
        ("write\n", "role read or write"),
    ],
)
def test_token_file_errors(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_tokens(path)


# ------------------------------------------------------------------------------ pushes, training


def _push_request(client_id: str, sequence: int, seed: int) -> reward_pb2.PushTransitionsRequest:
    obs, act, nxt = probe_batch(10, seed=seed)
    return reward_pb2.PushTransitionsRequest(
        obs=to_tensor(obs), action=to_tensor(act), next_obs=to_tensor(nxt),
        client_id=client_id, sequence=sequence,
    )  # fmt: skip


def test_retried_push_is_ingested_once(trainer: tuple[Any, RewardLearner]) -> None:
    server, learner = trainer
    channel, stub = stub_for(address(server))
    first = stub.PushTransitions(_push_request("client-a", 1, seed=1), timeout=10)
    assert (first.accepted_rows, first.duplicate, first.total_pushed) == (10, False, 10)
    for _ in range(3):  # the same (client_id, sequence) again: a retry
        again = stub.PushTransitions(_push_request("client-a", 1, seed=1), timeout=10)
        assert (again.accepted_rows, again.duplicate, again.last_sequence) == (0, True, 1)
    older = stub.PushTransitions(_push_request("client-a", 1, seed=2), timeout=10)
    assert older.duplicate
    other = stub.PushTransitions(_push_request("client-b", 1, seed=3), timeout=10)
    assert other.accepted_rows == 10 and other.total_pushed == 20
    nxt = stub.PushTransitions(_push_request("client-a", 2, seed=4), timeout=10)
    assert nxt.accepted_rows == 10 and nxt.total_pushed == 30
    RewardClient(address(server)).sync(timeout_s=30)
    assert learner.agent.total_added == 30
    assert server.metrics.duplicate_pushes == 4
    channel.close()


def test_out_of_order_pushes_of_one_client_are_each_ingested_once(
    trainer: tuple[Any, RewardLearner],
) -> None:
    """Concurrent pushes of one client may arrive out of order: within 64 sequence numbers
    each is ingested once; far older ones count as retries."""
    server, learner = trainer
    channel, stub = stub_for(address(server))
    accepted = [
        stub.PushTransitions(_push_request("client-c", q, seed=q), timeout=10).accepted_rows
        for q in (3, 1, 2, 2, 3, 70, 7, 6)
    ]
    assert accepted == [10, 10, 10, 0, 0, 10, 10, 0]  # 6 is 64 below 70: treated as a retry
    RewardClient(address(server)).sync(timeout_s=30)
    assert learner.agent.total_added == 50
    channel.close()


def test_client_retries_unavailable_with_the_same_sequence(
    trainer: tuple[Any, RewardLearner],
) -> None:
    """The push reached the server but the answer was lost (UNAVAILABLE): the client retries
    with the same (client_id, sequence) and the server ingests it once."""
    server, learner = trainer
    client = RewardClient(address(server), backoff_s=0.01)
    real = client._ensure_process()
    attempts: list[int] = []

    class LostReply(grpc.RpcError):
        def code(self) -> grpc.StatusCode:
            return Code.UNAVAILABLE

        def details(self) -> str:
            return "connection reset"

    class Flaky:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def PushTransitions(self, request: Any, **kwargs: Any) -> Any:
            attempts.append(request.sequence)
            reply = real.PushTransitions(request, **kwargs)
            if len(attempts) < 3:
                raise LostReply()
            return reply

    client._stub = Flaky()
    assert client.push(*probe_batch(8, seed=0)) == 0  # the third attempt is a duplicate
    assert attempts == [1, 1, 1]
    assert client.push(*probe_batch(8, seed=1)) == 8
    client.sync(timeout_s=30)
    assert learner.agent.total_added == 16


def test_sync_waits_for_training_and_versions_grow(trainer: tuple[Any, RewardLearner]) -> None:
    server, learner = trainer
    client = RewardClient(address(server))
    probe = probe_batch(64, seed=42)[:2]
    client.reward(*probe)
    versions = [client.last_model_version]
    for k in range(4):
        client.push(*probe_batch(25, seed=k))
        synced = client.sync(timeout_s=60)
        assert synced["updates"] == max(0, 25 * (k + 1) - 32 + 1)
        assert synced["model_version"] == synced["updates"]  # published once caught up
        client.reward(*probe)
        versions.append(client.last_model_version)
        assert client.last_model_version == synced["model_version"]
    assert versions == sorted(versions) and versions[-1] == 100 - 31
    # The served model is a published snapshot: equal to the learner's weights after sync.
    served = client.reward(*probe)
    assert np.max(np.abs(served - learner.reward(*probe))) <= TOL
    assert client.stats()["serving"]["pending_updates"] == 0


def wait_for_updates(learner: RewardLearner, n: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while learner.n_updates < n:
        assert time.monotonic() < deadline, f"{learner.n_updates} of {n} updates"
        time.sleep(0.01)


def test_the_trainer_takes_the_sync_thread_count_only_while_a_client_waits(
    demo_store: Path,
) -> None:
    """`--sync-threads 2`: the trainer trains with 2 torch threads while a Sync waits (its
    agent idles) and with the server's count otherwise; without Sync nothing changes."""
    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)  # the server's count: the creating thread's
    learner = small_learner(demo_store)
    server = start_inprocess(learner, publish_every=5, sync_torch_threads=2)
    torch.set_num_threads(threads_before)
    try:
        counts = server.host.updates_by_threads
        client = RewardClient(address(server))
        client.push(*probe_batch(64, seed=0))  # min_agent_size 32: 33 updates owed
        wait_for_updates(learner, 33)
        assert dict(counts) == {1: 33}
        client.push(*probe_batch(400, seed=1))  # 400 more, and Sync at once
        client.sync(timeout_s=120)
        assert counts[2] > 0 and counts[1] + counts[2] == 433
        after_sync = dict(counts)
        client.push(*probe_batch(50, seed=2))  # Sync has returned: the server's count again
        wait_for_updates(learner, 483)
        assert counts[2] == after_sync[2] and counts[1] == after_sync[1] + 50
    finally:
        server.stop(grace_s=0.0)
    with pytest.raises(ValueError, match="sync_torch_threads"):
        check_options(ServeOptions(sync_torch_threads=-1))


def test_push_quota_is_resource_exhausted(demo_store: Path) -> None:
    server = start_inprocess(
        small_learner(demo_store), train=False, push_quota=10.0, push_quota_window_s=3.0
    )
    try:
        client = RewardClient(address(server), max_retries=0)
        assert client.push(*probe_batch(20, seed=0)) == 20  # burst of up to 30 rows
        with pytest.raises(RewardServiceError) as err:
            client.push(*probe_batch(20, seed=1))
        assert err.value.code == Code.RESOURCE_EXHAUSTED and "quota" in err.value.details
        other = RewardClient(address(server), max_retries=0)  # quotas are per client
        assert other.push(*probe_batch(20, seed=2)) == 20
        assert server.metrics.push_rows == 40
    finally:
        server.stop(grace_s=0.0)


# ------------------------------------------------------------------------------ lifecycle


def test_graceful_stop_lets_in_flight_calls_finish(
    demo_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_inprocess(small_learner(demo_store), train=False, grace_s=5.0)
    slow_scoring(monkeypatch, lambda: time.sleep(0.5))
    addr = address(server)
    obs, act, _ = probe_batch(3, seed=0)
    results: list[Any] = []
    in_flight = threading.Thread(target=lambda: results.append(RewardClient(addr).reward(obs, act)))
    in_flight.start()
    time.sleep(0.2)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    time.sleep(0.1)
    late = RewardClient(addr, max_retries=0, timeout_s=2)
    with pytest.raises(RewardServiceError) as err:
        late.reward(obs, act)
    assert err.value.code == Code.UNAVAILABLE
    in_flight.join(10)
    stopper.join(10)
    assert len(results) == 1 and results[0].shape == (3,)
    assert server.state == "stopped"


def test_health_serving_then_not_serving_on_sigterm(demo_store: Path, serve_process: Any) -> None:
    proc = serve_process("--demos", str(demo_store), *SMALL_FLAGS, "--grace", "1")
    client = proc.client()
    seen = wait_serving(client)
    assert seen[-1] == "SERVING" and set(seen) <= {"UNREACHABLE", "NOT_SERVING", "SERVING"}
    channel = grpc.insecure_channel(proc.address)
    watch = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(service="sd2ail.v1.RewardService"), timeout=30
    )
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    proc.signal(signal.SIGTERM)
    assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert proc.wait(60) == 0
    channel.close()


def test_sigterm_then_resume_gives_the_same_rewards(
    demo_store: Path, serve_process: Any, tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    flags = ("--demos", str(demo_store), *SMALL_FLAGS,
             "--checkpoint-dir", str(ckpt), "--checkpoint-every", "0", "--grace", "1")  # fmt: skip
    proc = serve_process(*flags)
    client = proc.client()
    wait_serving(client)
    for k in range(3):
        client.push(*probe_batch(30, seed=200 + k))
    client.sync(timeout_s=120)
    probe = probe_batch(512, seed=77)
    before = client.reward(*probe)
    version = client.last_model_version
    last_sequence = client._sequence
    assert version == 90 - 31
    assert proc.terminate() == 0
    assert "final checkpoint" in proc.log_text()

    resumed = serve_process(*flags, "--resume")
    client2 = resumed.client()
    wait_serving(client2)
    after = client2.reward(*probe)
    assert client2.last_model_version == version
    assert np.max(np.abs(after - before)) <= TOL
    # The idempotency state survived: the old client's last push is still a duplicate.
    channel, stub = stub_for(resumed.address)
    reply = stub.PushTransitions(_push_request(client.client_id, last_sequence, 0), timeout=10)
    assert reply.duplicate and reply.total_pushed == 90
    channel.close()
    assert resumed.terminate() == 0


def test_kill9_during_training_then_resume_loads_a_good_checkpoint(
    demo_store: Path, serve_process: Any, tmp_path: Path
) -> None:
    """SIGKILL at random moments of training and checkpoint writing (every 3 updates); each
    --resume comes back SERVING from the newest verified generation, and its rewards equal
    those computed offline from that generation."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    ckpt = tmp_path / "ckpt"
    flags = ("--demos", str(demo_store), *SMALL_FLAGS,
             "--checkpoint-dir", str(ckpt), "--checkpoint-every", "3",
             "--publish-every", "2")  # fmt: skip
    proc = serve_process(*flags)
    client = proc.client()
    wait_serving(client)
    for k in range(20):
        client.push(*probe_batch(50, seed=300 + k))  # ~1000 updates owed: training keeps going
    client.checkpoint()  # a generation that holds every push, whatever the kills hit later
    steps = []
    for cycle in range(3):
        time.sleep(rng.uniform(0.2, 1.5))
        proc.kill()
        latest = CheckpointStore(ckpt).load_latest()  # raises if no good generation is left
        steps.append(latest.step)
        proc = serve_process(*flags, "--resume")
        info = proc.client().wait_ready(60)
        assert info.model_version >= latest.step, f"cycle {cycle}, seed {seed}"
        assert f"resuming from checkpoint {latest.path}" in proc.log_text(), f"seed {seed}"
    time.sleep(rng.uniform(0.2, 1.0))
    proc.kill()
    latest = CheckpointStore(ckpt).load_latest()
    steps.append(latest.step)
    assert latest.meta["total_pushed"] == 1000
    assert steps == sorted(steps) and steps[-1] > 0, f"checkpoint steps {steps}, seed {seed}"
    frozen = serve_process(*flags, "--resume", "--no-train")
    client = frozen.client()
    client.wait_ready(60)
    probe = probe_batch(1024, seed=5)
    served = client.reward(*probe)
    assert client.last_model_version == latest.step, f"seed {seed}"
    learner = RewardLearner(
        RewardLearner.config_from_state(latest.state), read_demos(demo_store), seed=0
    )
    learner.load_state_dict(latest.state)
    assert np.max(np.abs(served - learner.reward(*probe))) <= TOL, f"seed {seed}"
    assert frozen.terminate() == 0
