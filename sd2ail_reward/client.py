"""RewardClient: the gRPC client of `sd2ail.v1.RewardService`.

* Same scoring signature as `RewardLearner`: ``reward(obs, act, next_obs=None) -> float32 (B,)``.
* Every call has a deadline (`timeout_s`). Only UNAVAILABLE (server restarting, not reachable
  yet, shutting down) is retried, with jittered exponential backoff; every other status raises
  `RewardServiceError` at once (INVALID_ARGUMENT as `RewardInvalidArgumentError`, which is
  also a ValueError, like the learner's own validation errors).
* Readiness: a server answers as soon as it listens but serves only once its learner is loaded
  and warm (grpc.health.v1 SERVING). The first call of a process, and the first after an
  UNAVAILABLE, waits for SERVING within that call's own deadline, so a user's first `step()`
  against a server that is still loading succeeds instead of failing; when the deadline passes
  first, the error (FAILED_PRECONDITION, the contract's "not ready") says the server was not
  ready, and why.
* Pushes carry ``(client_id, sequence)``: the client numbers its pushes itself, so a retried push
  is ingested once by the server.
* Fork safe and picklable: the channel is created lazily, per process id. A client created
  before a fork (Gymnasium ``AsyncVectorEnv``, Tianshou subprocess envs) opens its own channel
  in the child, and the child pushes under its own fresh client_id, so sequences of different
  processes never collide. Pickling drops the channel.
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sd2ail_reward.convert import decode_reward, to_tensor
from sd2ail_reward.rpc import reward_pb2, reward_pb2_grpc

__all__ = [
    "RewardClient",
    "RewardInvalidArgumentError",
    "RewardServiceError",
    "ServerInfo",
]

TOKEN_ENV = "SD2AIL_REWARD_TOKEN"
"""Environment variable read for the token when none is passed."""
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20

_ORPHANED: list[Any] = []
"""Channels inherited through fork(): never closed or collected in the child (gRPC core does
not support using or tearing down a parent's channel there)."""

_R = TypeVar("_R")

_POLL_S = (0.02, 0.25)
"""First and largest pause between health checks while waiting for SERVING."""
_SERVING = health_pb2.HealthCheckResponse.SERVING


class RewardServiceError(RuntimeError):
    """A call failed with a gRPC status; `code` and `details` say which and why."""

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{method}: {code.name}: {details}")
        self.method = method
        self.code = code
        self.details = details


class RewardInvalidArgumentError(RewardServiceError, ValueError):
    """The server refused the request as malformed (INVALID_ARGUMENT)."""


def _error(method: str, err: grpc.RpcError) -> RewardServiceError:
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else None) or str(err)
    cls = (
        RewardInvalidArgumentError
        if code == grpc.StatusCode.INVALID_ARGUMENT
        else RewardServiceError
    )
    return cls(method, code, details)


@dataclass(frozen=True)
class ServerInfo:
    """GetInfo's answer (see proto/sd2ail/v1/reward.proto for each field)."""

    env_id: str
    algo: str
    obs_dim: int
    act_dim: int
    model_version: int
    ready: bool
    requires_next_obs: bool
    max_request_rows: int
    max_message_bytes: int
    push_quota_rows_per_s: float
    updates_per_transition: float
    training: bool
    server_version: str
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]


def _message_dict(msg: Message) -> dict[str, Any]:
    """A message as plain Python values (maps -> dict, repeated messages -> list of dicts)."""
    out: dict[str, Any] = {}
    for fd in msg.DESCRIPTOR.fields:
        value = getattr(msg, fd.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            out[fd.name] = dict(value)
        elif fd.message_type is not None and _is_repeated(fd):
            out[fd.name] = [_message_dict(v) for v in value]
        elif fd.message_type is not None:
            out[fd.name] = _message_dict(value)
        elif _is_repeated(fd):
            out[fd.name] = list(value)
        else:
            out[fd.name] = value
    return out


def _is_repeated(fd: Any) -> bool:
    if hasattr(fd, "is_repeated"):  # protobuf >= 6
        return bool(fd.is_repeated)
    return bool(fd.label == fd.LABEL_REPEATED)


def _read_pem(value: bytes | str | os.PathLike[str] | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return Path(value).read_bytes()


class RewardClient:
    """Client of a reward server at `address` ("host:port").

    Args:
        address: the server, e.g. "127.0.0.1:50051".
        token: bearer token for a server started with --token-file (default: the
            SD2AIL_REWARD_TOKEN environment variable, if set).
        timeout_s: deadline of every call, per attempt.
        sync_timeout_s: default deadline of `sync()` (training may take a while to catch up).
        max_retries: retries of a call that failed with UNAVAILABLE (0 = none).
        backoff_s / backoff_max_s: first and largest pause between retries (doubling, jittered).
        root_certificates: PEM CA bundle (bytes or a path) to verify a TLS server; giving it (or
            tls=True, which uses the system roots) makes the channel TLS.
        client_id: identity for push de-duplication (default: a random UUID). Used only in the
            process that created the client; forked or unpickled copies get fresh ones.
    """

    def __init__(
        self,
        address: str,
        token: str | None = None,
        timeout_s: float = 10.0,
        *,
        sync_timeout_s: float = 600.0,
        max_retries: int = 5,
        backoff_s: float = 0.05,
        backoff_max_s: float = 2.0,
        root_certificates: bytes | str | os.PathLike[str] | None = None,
        tls: bool | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        client_id: str | None = None,
    ) -> None:
        if timeout_s <= 0 or sync_timeout_s <= 0:
            raise ValueError("timeout_s and sync_timeout_s must be > 0")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.address = address
        self.timeout_s = float(timeout_s)
        self.sync_timeout_s = float(sync_timeout_s)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.max_message_bytes = max_message_bytes
        self._root_certificates = _read_pem(root_certificates)
        self._tls = bool(tls) if tls is not None else self._root_certificates is not None
        token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._owner_pid = os.getpid()
        self._given_id = client_id
        self.last_model_version = 0
        """model_version of the most recent reward() answer."""
        self._reset_process_state()

    # ------------------------------------------------------------------ process-local state

    def _reset_process_state(self) -> None:
        self._pid: int | None = None
        self._channel: grpc.Channel | None = None
        self._stub: reward_pb2_grpc.RewardServiceStub | None = None
        self._health: health_pb2_grpc.HealthStub | None = None
        self._serving = False  # this process has seen the server SERVING since its last outage
        self._lock = threading.Lock()
        given = self._given_id if os.getpid() == self._owner_pid else None
        self._client_id: str = given or uuid.uuid4().hex
        self._sequence = 0

    def _ensure_process(self) -> reward_pb2_grpc.RewardServiceStub:
        pid = os.getpid()
        stub = self._stub
        if self._pid == pid and stub is not None:
            return stub
        if self._pid is not None and self._pid != pid:  # forked: leave the parent's channel be
            _ORPHANED.append(self._channel)
            self._reset_process_state()
        with self._lock:
            if self._stub is None or self._pid != pid:
                self._channel = self._make_channel()
                self._stub = reward_pb2_grpc.RewardServiceStub(self._channel)
                self._health = health_pb2_grpc.HealthStub(self._channel)
                self._serving = False
                self._pid = pid
            return self._stub

    def _make_channel(self) -> grpc.Channel:
        options = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.enable_retries", 0),  # this client retries UNAVAILABLE itself
            # Reconnect quickly after a server restart (the default backoff grows to 120 s).
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        if self._tls:
            creds = grpc.ssl_channel_credentials(root_certificates=self._root_certificates)
            return grpc.secure_channel(self.address, creds, options=options)
        return grpc.insecure_channel(self.address, options=options)

    @property
    def client_id(self) -> str:
        """The id this process pushes under."""
        if self._pid != os.getpid():
            self._ensure_process()
        return self._client_id

    def close(self) -> None:
        """Close this process's channel (a later call opens a new one)."""
        if self._pid == os.getpid() and self._channel is not None:
            self._channel.close()
        self._channel = self._stub = self._health = None
        self._serving = False
        self._pid = None

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in (
            "_channel",
            "_stub",
            "_health",
            "_serving",
            "_lock",
            "_pid",
            "_client_id",
            "_sequence",
        ):
            state.pop(key, None)
        state["_owner_pid"] = -1  # an unpickled copy is never the owner of `client_id`
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_process_state()

    def __repr__(self) -> str:
        return f"RewardClient({self.address!r}, timeout_s={self.timeout_s})"

    # ------------------------------------------------------------------ calls

    def _call(
        self,
        method: str,
        invoke: Callable[[reward_pb2_grpc.RewardServiceStub, float], _R],
        timeout_s: float | None = None,
        *,
        needs_serving: bool = True,
    ) -> _R:
        """One RPC with a deadline of `timeout_s` per attempt (readiness wait included),
        retried on UNAVAILABLE only."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        delay = self.backoff_s
        for attempt in range(self.max_retries + 1):
            stub = self._ensure_process()
            deadline = time.monotonic() + timeout
            waited = needs_serving and not self._serving
            try:
                if waited:
                    self._await_serving(timeout, deadline)
                result = invoke(stub, max(deadline - time.monotonic(), 1e-3))
                self._serving = self._serving or needs_serving
                return result
            except grpc.RpcError as err:
                code = err.code() if hasattr(err, "code") else None
                if code == grpc.StatusCode.UNAVAILABLE:
                    self._serving = False  # it may come back loading: wait for it again
                if code == grpc.StatusCode.FAILED_PRECONDITION and waited:
                    raise RewardServiceError(
                        method,
                        code,
                        f"the reward server at {self.address} was not ready within the call's "
                        f"{timeout:g} s deadline ({_error(method, err).details}); give the "
                        "client a longer timeout_s or call wait_ready() first",
                    ) from None
                if code != grpc.StatusCode.UNAVAILABLE or attempt == self.max_retries:
                    raise _error(method, err) from None
            time.sleep(delay * (0.5 + 0.5 * random.random()))
            delay = min(2.0 * delay, self.backoff_max_s)
        raise AssertionError("unreachable")

    def _await_serving(self, timeout: float, deadline: float) -> None:
        """Poll grpc.health.v1 until SERVING, for most of the call's time: the last quarter
        (at most 1 s) is left to the call itself, whose answer then says why the server is
        not ready (still loading, or failed to load). UNAVAILABLE (nothing listening)
        propagates, so the retry policy applies; without a health service (UNIMPLEMENTED) the
        call just goes ahead."""
        assert self._health is not None
        give_up = deadline - min(0.25 * timeout, 1.0)
        pause = _POLL_S[0]
        while (remaining := give_up - time.monotonic()) > 0:
            try:
                reply = self._health.Check(
                    health_pb2.HealthCheckRequest(service=""),
                    timeout=min(remaining, self.timeout_s),
                )
            except grpc.RpcError as err:
                code = err.code() if hasattr(err, "code") else None
                if code == grpc.StatusCode.UNIMPLEMENTED:
                    return
                if code != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise
            else:
                if reply.status == _SERVING:
                    self._serving = True
                    return
            time.sleep(max(0.0, min(pause, give_up - time.monotonic())))
            pause = min(2.0 * pause, _POLL_S[1])

    def info(self) -> ServerInfo:
        """Dims, env id, algorithm, limits, model version and readiness."""
        resp = self._call(
            "GetInfo",
            lambda stub, t: stub.GetInfo(
                reward_pb2.GetInfoRequest(), timeout=t, metadata=self._metadata
            ),
            needs_serving=False,  # how a caller learns about a server that is still loading
        )
        return ServerInfo(
            env_id=resp.env_id,
            algo=resp.algo,
            obs_dim=resp.obs_dim,
            act_dim=resp.act_dim,
            model_version=resp.model_version,
            ready=resp.ready,
            requires_next_obs=resp.requires_next_obs,
            max_request_rows=resp.max_request_rows,
            max_message_bytes=resp.max_message_bytes,
            push_quota_rows_per_s=resp.push_quota_rows_per_s,
            updates_per_transition=resp.updates_per_transition,
            training=resp.training,
            server_version=resp.server_version,
            action_low=tuple(resp.action_low),
            action_high=tuple(resp.action_high),
        )

    def reward(
        self, obs: npt.ArrayLike, act: npt.ArrayLike, next_obs: npt.ArrayLike | None = None
    ) -> np.ndarray:
        """reward_scale * -log(1 - D(s, a)) per transition: float32 (B,). obs (B, O), act
        (B, A) in env space; next_obs (B, O) where the server requires it. Raises
        RewardInvalidArgumentError (a ValueError) for a malformed batch."""
        request = reward_pb2.ComputeRewardRequest(
            obs=to_tensor(obs),
            action=to_tensor(act),
            next_obs=None if next_obs is None else to_tensor(next_obs),
        )
        resp = self._call(
            "ComputeReward",
            lambda stub, t: stub.ComputeReward(request, timeout=t, metadata=self._metadata),
        )
        self.last_model_version = resp.model_version
        return decode_reward(resp.reward)

    def push(
        self,
        obs: npt.ArrayLike,
        act: npt.ArrayLike,
        next_obs: npt.ArrayLike | None = None,
    ) -> int:
        """Push agent transitions for training; returns the rows the server ingested (0 when
        the server had already ingested this push, i.e. a retry). Needs a write token."""
        self._ensure_process()
        with self._lock:
            self._sequence += 1
            sequence = self._sequence
        request = reward_pb2.PushTransitionsRequest(
            obs=to_tensor(obs),
            action=to_tensor(act),
            next_obs=None if next_obs is None else to_tensor(next_obs),
            client_id=self._client_id,
            sequence=sequence,
        )
        resp = self._call(
            "PushTransitions",
            lambda stub, t: stub.PushTransitions(request, timeout=t, metadata=self._metadata),
        )
        return int(resp.accepted_rows)

    def sync(self, timeout_s: float | None = None) -> dict[str, int]:
        """Wait until the server has trained on everything pushed so far (and published it).
        Returns model_version, updates and total_pushed. Needs a write token."""
        timeout = self.sync_timeout_s if timeout_s is None else timeout_s
        request = reward_pb2.SyncRequest(timeout_ms=max(1, int(timeout * 1e3)))
        resp = self._call(
            "Sync",
            lambda stub, t: stub.Sync(request, timeout=t, metadata=self._metadata),
            timeout_s=timeout + 1.0,
        )
        return {
            "model_version": int(resp.model_version),
            "updates": int(resp.updates),
            "total_pushed": int(resp.total_pushed),
        }

    def stats(self) -> dict[str, Any]:
        """{"learner": {name: value}, "serving": {field: value}} (see GetStatsResponse)."""
        resp = self._call(
            "GetStats",
            lambda stub, t: stub.GetStats(
                reward_pb2.GetStatsRequest(), timeout=t, metadata=self._metadata
            ),
        )
        return {"learner": dict(resp.learner), "serving": _message_dict(resp.serving)}

    def checkpoint(self) -> dict[str, Any]:
        """Ask the server to write a checkpoint now; returns generation, step, total_pushed."""
        resp = self._call(
            "SaveCheckpoint",
            lambda stub, t: stub.SaveCheckpoint(
                reward_pb2.SaveCheckpointRequest(), timeout=t, metadata=self._metadata
            ),
        )
        return {
            "generation": resp.generation,
            "step": int(resp.step),
            "total_pushed": int(resp.total_pushed),
        }

    def health(self, service: str = "") -> str:
        """The server's grpc.health.v1 status name: "SERVING", "NOT_SERVING", ...
        ("UNREACHABLE" when no server answers)."""
        self._ensure_process()
        assert self._health is not None
        try:
            resp = self._health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=self.timeout_s
            )
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return "UNREACHABLE"
            raise _error("Health/Check", err) from None
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))

    def wait_ready(self, timeout_s: float = 60.0, poll_s: float = 0.05) -> ServerInfo:
        """Poll health until SERVING, then return info(); TimeoutError after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        status = "UNREACHABLE"
        while time.monotonic() < deadline:
            status = self.health()
            if status == "SERVING":
                return self.info()
            time.sleep(poll_s)
        raise TimeoutError(
            f"reward server {self.address} not SERVING after {timeout_s:g} s (last: {status})"
        )
