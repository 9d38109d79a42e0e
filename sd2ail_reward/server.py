"""The gRPC reward server: one RewardLearner behind `sd2ail.v1.RewardService`.

The only module with threads. Pieces, each owning its own state:

* ``_Batcher`` (dynamic batching, as Triton's): ComputeReward handlers validate their request,
  turn it into discriminator rows and put it on a bounded queue (full -> RESOURCE_EXHAUSTED at
  once). One worker thread takes the oldest request, then every request already queued, waiting
  up to ``max_queue_delay_ms`` for more, up to ``max_batch_rows`` rows; scores the concatenation
  with the *published* model and hands each caller exactly its own slice. Requests whose
  deadline passed in the queue are dropped uncomputed. A malformed request never reaches the
  queue, so it cannot disturb anyone else's batch.
* Publishing: ComputeReward never touches the live learner. It scores with a
  ``RewardModel`` snapshot (``learner.snapshot()``: a frozen copy of the weights) that the
  trainer replaces by reference, so a half-updated model is never served; ``model_version``
  (= discriminator updates included) grows with every publish.
* The trainer thread is the only writer of the learner. Pushed transitions are validated and
  de-duplicated by (client_id, sequence) in the handler, queued, and ingested by the trainer,
  which runs ``disc_updates_per_transition`` updates per pushed transition (the k-th pushed
  transition earns updates once k >= ``min_agent_size``), publishing every ``publish_every``
  updates and whenever it catches up. ``Sync`` waits until the trainer has caught up with
  everything pushed before the call and published the result.
* Checkpoints (``--checkpoint-dir``): a ``CheckpointStore`` generation every
  ``checkpoint_every`` updates, on SaveCheckpoint, and on graceful shutdown. The state is
  ``learner.state_dict()``; the meta holds the last ingested sequence per client (so pushes stay
  idempotent across a restart), the push total and the demo selection. Everything is captured
  under the learner lock, so weights, buffers and sequences come from one moment.
* Security: plaintext only on loopback by default; a non-loopback bind needs a token file
  (and TLS, or an explicit ``allow_insecure_remote``). Tokens are checked by an interceptor with
  ``hmac.compare_digest``; read-only tokens cannot push, sync or checkpoint.
* Health (``grpc.health.v1``): NOT_SERVING while loading and warming up, SERVING after,
  NOT_SERVING from the first moment of a graceful shutdown.
"""

from __future__ import annotations

import enum
import hmac
import importlib.metadata
import ipaddress
import logging
import math
import os
import signal
import stat
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import grpc
import numpy as np
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sd2ail_reward.checkpoint import CheckpointError, CheckpointStore
from sd2ail_reward.config import LearnerConfig
from sd2ail_reward.convert import TensorError, decode_matrix, decode_vector, to_tensor
from sd2ail_reward.learner import RewardLearner, RewardModel
from sd2ail_reward.rpc import SERVICE_NAME, reward_pb2, reward_pb2_grpc

__all__ = [
    "LearnerSpec",
    "RewardServer",
    "ServeOptions",
    "TokenFileError",
    "build_server",
    "is_loopback",
    "load_tokens",
    "resolve_device",
    "serve",
]

logger = logging.getLogger(__name__)


def _package_version() -> str:
    try:
        return importlib.metadata.version("sd2ail-reward")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


__version__ = _package_version()
audit = logging.getLogger(__name__ + ".audit")

Role = Literal["read", "write"]
ROLES: tuple[Role, ...] = ("read", "write")
WRITE_METHODS = frozenset(
    f"/{SERVICE_NAME}/{name}" for name in ("PushTransitions", "Sync", "SaveCheckpoint")
)
"""RPCs a read-only token may not call."""
_HEALTH_PREFIX = "/grpc.health.v1.Health/"
MIN_TOKEN_CHARS = 16
MAX_CLIENT_ID_CHARS = 128


# ------------------------------------------------------------------------------ configuration


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    """How the server listens, batches, trains, checkpoints and authenticates."""

    host: str = "127.0.0.1"
    """Address to bind. Anything but loopback needs `token_file` (and TLS or
    `allow_insecure_remote`)."""
    port: int = 0
    """TCP port; 0 picks a free one (see `RewardServer.port`)."""
    batching: bool = True
    """Server-side dynamic batching of ComputeReward; False scores each request in its handler."""
    max_batch_rows: int = 4096
    """Most rows in one batched model evaluation (a single larger request runs alone)."""
    max_queue_delay_ms: float = 0.0
    """How long the batcher waits for more requests after the oldest queued one, in ms. 0 batches
    whatever queued up while the model was busy, adding no delay at low load."""
    max_queue_size: int = 1024
    """Most ComputeReward requests waiting in the batcher queue; more get RESOURCE_EXHAUSTED."""
    max_request_rows: int = 65536
    """Largest batch (rows) one ComputeReward / PushTransitions request may carry."""
    max_message_bytes: int = 64 << 20
    """grpc.max_receive/send_message_length; larger messages get RESOURCE_EXHAUSTED."""
    workers: int = 64
    """Threads of the gRPC handler pool."""
    max_concurrent_rpcs: int = 1024
    """RPCs in progress at once; more get RESOURCE_EXHAUSTED."""
    token_file: Path | None = None
    """Token file (see `load_tokens`); without one, no authentication (loopback only)."""
    tls_cert: Path | None = None
    """PEM certificate chain; with `tls_key`, serve TLS."""
    tls_key: Path | None = None
    """PEM private key of `tls_cert`."""
    tls_client_ca: Path | None = None
    """PEM CA bundle; when given, clients must present a certificate it signed (mTLS)."""
    allow_insecure_remote: bool = False
    """Permit plaintext on a non-loopback address (tokens then travel unencrypted)."""
    reflection: bool | None = None
    """gRPC server reflection; None = on for loopback binds only."""
    train: bool = True
    """Train the discriminator on pushed transitions (False: reward-only serving)."""
    publish_every: int = 10
    """Publish new weights to ComputeReward every this many updates (and when caught up)."""
    checkpoint_dir: Path | None = None
    """Where checkpoint generations go (the only directory the server writes)."""
    checkpoint_every: int = 1000
    """Write a checkpoint every this many discriminator updates (0 = only on request/shutdown)."""
    keep_checkpoints: int = 3
    """Generations kept in checkpoint_dir."""
    resume: bool = False
    """Continue from the latest good checkpoint in checkpoint_dir (fresh if there is none)."""
    resume_generation: str | None = None
    """Continue from exactly this generation of checkpoint_dir (an error if it cannot load)."""
    push_quota: float = 0.0
    """Rows per second one client_id may push, averaged over `push_quota_window_s` (0 = off)."""
    push_quota_window_s: float = 10.0
    """Window of the push quota: a client may burst up to push_quota * window rows."""
    max_tracked_clients: int = 100_000
    """Client ids whose last sequence is remembered (least recently pushing forgotten first)."""
    log_every_s: float = 10.0
    """Interval of the one-line throughput/learner log and of GetStats' rates (0 = no log)."""
    grace_s: float = 5.0
    """Graceful shutdown: how long in-flight RPCs may take to finish."""
    warmup_rows: tuple[int, ...] = (1, 64)
    """Batch sizes scored once before the server reports SERVING."""


@dataclass(frozen=True, kw_only=True)
class LearnerSpec:
    """How to build the learner from a demo store (read in the background after binding)."""

    demos: Path
    config: LearnerConfig
    num_demos: int | None = None
    select: Literal["first", "random"] = "first"
    demo_seed: int = 0
    episodes: tuple[int, ...] | None = None
    """Explicit store indices of the expert episodes (overrides num_demos and select)."""
    seed: int = 0
    device: str = "auto"


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'; anything else unchanged."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1."""
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class TokenFileError(ValueError):
    """The token file is missing, malformed or unsafe."""


def load_tokens(path: str | os.PathLike[str]) -> dict[str, Role]:
    """Parse a token file: one ``<role> <token>`` per line, role ``read`` or ``write``.

    ``read`` tokens may call GetInfo, ComputeReward and GetStats; ``write`` tokens may call
    everything. Blank lines and lines starting with ``#`` are ignored. Tokens are at least 16
    printable ASCII characters without spaces (e.g. ``python -c "import secrets;
    print(secrets.token_urlsafe(32))"``). Clients send ``authorization: Bearer <token>``.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="ascii")
    except FileNotFoundError:
        raise TokenFileError(f"token file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise TokenFileError(f"token file {p} is unreadable or not ASCII: {err}") from err
    if p.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning("token file %s is readable by group/others; chmod 600 it", p)
    tokens: dict[str, Role] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in ROLES:
            raise TokenFileError(
                f"{p}:{lineno}: expected '<role> <token>' with role read or write, "
                f"got {len(parts)} field(s) starting {parts[0]!r}"
            )
        role, token = parts[0], parts[1]
        if len(token) < MIN_TOKEN_CHARS or not token.isprintable():
            raise TokenFileError(
                f"{p}:{lineno}: token must be >= {MIN_TOKEN_CHARS} printable characters"
            )
        if token in tokens:
            raise TokenFileError(f"{p}:{lineno}: token listed twice")
        tokens[token] = "write" if role == "write" else "read"
    if not tokens:
        raise TokenFileError(f"token file {p} holds no tokens")
    return tokens


# ------------------------------------------------------------------------------ errors, auth


class _Abort(Exception):
    """Raised inside handlers: answer with this status code and message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _abort_handler(
    handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler:
    def deny(_request: object, context: grpc.ServicerContext) -> Any:
        context.abort(code, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)


class _AuthInterceptor(grpc.ServerInterceptor):
    """`authorization: Bearer <token>` on every RPC but health checks; write role for writes."""

    def __init__(self, tokens: dict[str, Role], on_error: Callable[[grpc.StatusCode], None]):
        self._tokens = [(t.encode(), role) for t, role in tokens.items()]
        self._on_error = on_error

    def _role(self, metadata: Any) -> Role | None:
        presented = b""
        for key, value in metadata or ():
            if key == "authorization":
                text = value if isinstance(value, str) else value.decode("latin-1")
                scheme, _, token = text.partition(" ")
                if scheme.lower() == "bearer":
                    presented = token.strip().encode("utf-8", "replace")
        role: Role | None = None
        for token, token_role in self._tokens:  # compare with every token: no early exit
            if hmac.compare_digest(presented, token):
                role = token_role
        return role

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        method = details.method
        if handler is None or method.startswith(_HEALTH_PREFIX):
            return handler
        role = self._role(details.invocation_metadata)
        if role is None:
            self._on_error(grpc.StatusCode.UNAUTHENTICATED)
            return _abort_handler(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or unknown token: send metadata 'authorization: Bearer <token>' with "
                "a token from the server's --token-file (RewardClient(token=...))",
            )
        if role != "write" and method in WRITE_METHODS:
            self._on_error(grpc.StatusCode.PERMISSION_DENIED)
            return _abort_handler(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method.rsplit('/', 1)[-1]} needs a token with the 'write' role; this token "
                "is 'read' (it may call GetInfo, ComputeReward and GetStats)",
            )
        return handler


# ------------------------------------------------------------------------------ serving figures


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


class _Metrics:
    """Serving counters; one lock, taken once per batch / request / error."""

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

    def batch(self, rows_per_request: list[int], queue_ms: list[float], compute_ms: float) -> None:
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


# ------------------------------------------------------------------------------ the batcher


def _torch_threads_here(num_threads: int) -> None:
    """Give the calling thread the server's torch thread count.

    OpenMP's thread count is per thread: `torch.set_num_threads` in the main thread does not
    reach threads started later (gRPC handler threads, the trainer), whose OpenMP and MKL calls
    then use one thread per core while `torch.get_num_threads()` still reports the main
    thread's value. On a busy 2-core machine that made a batch-1 reward in a handler thread
    15 to 28 ms instead of 0.5 ms (measured; the OpenMP workers spin and futex-wait against
    the handler, the other process and the GIL). Every thread that runs torch calls this first.
    """
    torch.set_num_threads(num_threads)


def _score_rows(model: RewardModel, x_BD: np.ndarray) -> np.ndarray:
    """The model's rewards of validated rows; inference mode skips autograd bookkeeping."""
    with torch.inference_mode():
        return model.reward_rows(x_BD)


class _Request:
    """One ComputeReward request in the batcher. `state`: pending -> (lead ->) done."""

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
        self.error: _Abort | None = None
        self.cancelled = False

    def finish(self, error: _Abort | None = None) -> None:
        self.error = error
        self.state = "done"
        if self.wake is not None:
            self.wake.set()


class _Batcher:
    """Dynamic batching without a dispatcher thread (leader/follower).

    A request that finds the batcher idle is scored at once by its own handler thread: no
    thread hand-off, so one client sees the latency of a direct call. Requests that arrive
    while a batch is being scored queue up (bounded); when the batch is done, the oldest queued
    request's thread is woken to lead the next batch, which takes every queued request (FIFO)
    up to `max_batch_rows` rows, after waiting up to `max_queue_delay_s` for more. Exactly one
    batch is scored at a time, always with one published model.
    """

    def __init__(
        self,
        model: Callable[[], RewardModel],
        metrics: _Metrics,
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
        return len(self._pending)

    def submit(self, rows: np.ndarray, timeout_s: float | None, context: Any) -> _Request:
        """Score `rows` (alone or with other requests); raises _Abort on failure."""
        deadline = math.inf if timeout_s is None else time.monotonic() + timeout_s
        req = _Request(rows, deadline)
        with self._lock:
            if self._closed:
                raise _Abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down; retry later")
            if len(self._pending) >= self._max_queue:
                raise _Abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"reward queue full ({self._max_queue} requests waiting): the server is "
                    "overloaded; back off and retry, batch transitions per request, or raise "
                    "--queue-size",
                )
            self._pending.append(req)
            if self._busy:
                req.state = "pending"
                wake = req.wake = threading.Event()
                self._arrived.notify()
            else:  # idle: this handler thread scores at once (no hand-off)
                self._busy = True
                req.state = "lead"
        if req.state == "pending":

            def on_done() -> None:  # the RPC ended (e.g. the client cancelled): stop waiting
                req.cancelled = True
                wake.set()

            context.add_callback(on_done)
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
            raise _Abort(
                grpc.StatusCode.DEADLINE_EXCEEDED if not woke else grpc.StatusCode.CANCELLED,
                "deadline passed while waiting in the reward queue",
            )
        if req.error is not None:
            raise req.error
        return req

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

    def close(self) -> None:
        """Refuse new requests; queued ones fail with UNAVAILABLE."""
        error = _Abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down; retry later")
        with self._lock:
            self._closed = True
            while self._pending:
                self._pending.popleft().finish(error)
            self._arrived.notify_all()

    def _score(self, batch: list[_Request]) -> None:
        start = time.monotonic()
        live: list[_Request] = []
        for req in batch:
            if req.cancelled:
                req.finish(_Abort(grpc.StatusCode.CANCELLED, "cancelled"))
            elif req.deadline <= start:
                req.finish(_Abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline passed in queue"))
                with self._metrics.lock:
                    self._metrics.expired += 1
            else:
                live.append(req)
        if not live:
            return
        try:
            model = self._model()  # one model version for the whole batch
            x = live[0].rows if len(live) == 1 else np.concatenate([r.rows for r in live])
            out = _score_rows(model, x)
            if not np.isfinite(out).all():
                raise FloatingPointError("the model produced a non-finite reward")
        except Exception as err:
            logger.exception("batched reward evaluation failed")
            error = _Abort(grpc.StatusCode.INTERNAL, f"reward evaluation failed: {err}")
            for req in live:
                req.finish(error)
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


# ------------------------------------------------------------------------------ helpers


class _FairLock:
    """A FIFO (ticket) lock: the trainer re-acquires it after every update, and a plain Lock
    would let it starve checkpoint and stats callers."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._next = 0
        self._serving = 0

    def __enter__(self) -> None:
        with self._cond:
            ticket = self._next
            self._next += 1
            while ticket != self._serving:
                self._cond.wait()

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._serving += 1
            self._cond.notify_all()


class _State(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class _Dims:
    obs_dim: int
    act_dim: int
    requires_next_obs: bool
    env_id: str
    algo: str
    updates_per_transition: float
    min_agent_size: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]


SEQUENCE_WINDOW = 64
"""Pushes of one client may arrive out of order by up to this many sequence numbers."""


@dataclass
class _Sequences:
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
    def from_state(cls, value: object) -> _Sequences:
        if isinstance(value, int):
            return cls(high=value, recent={value})
        if not isinstance(value, list) or not value:
            raise ValueError(f"checkpoint meta: bad push sequence state {value!r}")
        return cls(high=int(value[0]), recent={int(q) for q in value[1:]})


@dataclass
class _Captured:
    """A consistent copy of everything a checkpoint holds."""

    state: dict[str, Any]
    step: int
    meta: dict[str, Any] = field(default_factory=dict)


_Push = tuple[np.ndarray, np.ndarray, np.ndarray | None]
"""A validated push waiting for the trainer: (obs, act, next_obs)."""
_Handler = Callable[[Any, Any, grpc.ServicerContext], Any]


def _rpc(method: _Handler) -> _Handler:
    """Turn _Abort (and unexpected errors) into status codes, counted in the metrics."""

    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except _Abort as err:
            code, message = err.code, err.message
        except Exception as err:
            logger.exception("%s failed", method.__name__)
            code, message = grpc.StatusCode.INTERNAL, f"internal error: {err!r}"
        self._server.metrics.error(code)
        context.abort(code, message)

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


def _remaining(context: grpc.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None or remaining > 1e8 else max(0.0, float(remaining))


# ------------------------------------------------------------------------------ the server


class RewardServer:
    """One learner served over gRPC. Create with `build_server`; stop with `stop()`."""

    def __init__(self, source: RewardLearner | LearnerSpec, options: ServeOptions) -> None:
        self.options = options
        self._source = source
        self.metrics = _Metrics()
        self.learner: RewardLearner | None = None
        self.dims: _Dims | None = None
        self._model: RewardModel | None = None
        self._state = _State.LOADING
        self._load_error = ""
        self._train_error = ""
        self.learner_lock = _FairLock()
        # Pushes: de-duplication, quotas and the queue for the trainer.
        self._push_lock = threading.Lock()
        self._pending: list[_Push] = []
        self._sequences: OrderedDict[str, _Sequences] = OrderedDict()
        self._quota: dict[str, tuple[float, float]] = {}
        self._accepted_rows = 0  # every row accepted (ingested or pending)
        self._ingested_rows = 0  # rows handed to the learner
        self._synced_rows = 0  # rows whose updates are done and published
        self._sync_cond = threading.Condition()
        self._work = threading.Event()
        self._stop_trainer = threading.Event()
        self._stop_reporter = threading.Event()
        self._ready = threading.Event()
        self._state_lock = threading.Lock()
        self._rpcs_closed = False  # set once the gRPC server has stopped (grace over)
        self._since_publish = 0
        self._threads: list[threading.Thread] = []
        self._batcher: _Batcher | None = None
        self._demo_meta: dict[str, Any] = {}
        self._last_saved: tuple[int, int] | None = None  # progress of the last checkpoint written
        self._store = (
            CheckpointStore(options.checkpoint_dir, keep=options.keep_checkpoints)
            if options.checkpoint_dir is not None
            else None
        )
        self._validate_options()
        self._torch_threads = torch.get_num_threads()  # the creating thread's, for every thread
        self.health = health.HealthServicer(experimental_non_blocking=True)
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.grpc_server = self._make_grpc_server()
        self.port = self._bind()

    # ------------------------------------------------------------------ construction

    def _validate_options(self) -> None:
        o = self.options
        if o.token_file is None and not is_loopback(o.host):
            raise ValueError(
                f"refusing to listen on non-loopback address {o.host!r} without "
                "authentication: give --token-file (and --tls-cert/--tls-key), or bind 127.0.0.1"
            )
        if (o.tls_cert is None) != (o.tls_key is None):
            raise ValueError("--tls-cert and --tls-key must be given together")
        if not is_loopback(o.host) and o.tls_cert is None and not o.allow_insecure_remote:
            raise ValueError(
                f"refusing plaintext on non-loopback address {o.host!r}: tokens would travel "
                "unencrypted; give --tls-cert/--tls-key (or --allow-insecure-remote)"
            )
        if (o.resume or o.resume_generation) and o.checkpoint_dir is None:
            raise ValueError("--resume and --resume-from need --checkpoint-dir")
        for name in ("max_batch_rows", "max_queue_size", "max_request_rows", "workers"):
            if getattr(o, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(o, name)}")
        if o.publish_every < 1 or o.checkpoint_every < 0 or o.push_quota < 0:
            raise ValueError("publish_every must be >= 1, checkpoint_every and push_quota >= 0")

    def _make_grpc_server(self) -> grpc.Server:
        o = self.options
        interceptors: list[grpc.ServerInterceptor] = []
        if o.token_file is not None:
            tokens = load_tokens(o.token_file)
            interceptors.append(_AuthInterceptor(tokens, self.metrics.error))
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=o.workers,
                thread_name_prefix="sd2ail-rpc",
                initializer=_torch_threads_here,
                initargs=(self._torch_threads,),
            ),
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", o.max_message_bytes),
                ("grpc.max_send_message_length", o.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=o.max_concurrent_rpcs,
        )
        reward_pb2_grpc.add_RewardServiceServicer_to_server(_Servicer(self), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflect = is_loopback(o.host) if o.reflection is None else o.reflection
        if reflect:
            from grpc_reflection.v1alpha import reflection

            names = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, server)
        return server

    def _bind(self) -> int:
        o = self.options
        host = f"[{o.host.strip('[]')}]" if ":" in o.host.strip("[]") else o.host
        address = f"{host}:{o.port}"
        if o.tls_cert is not None and o.tls_key is not None:
            client_ca = o.tls_client_ca.read_bytes() if o.tls_client_ca else None
            creds = grpc.ssl_server_credentials(
                [(o.tls_key.read_bytes(), o.tls_cert.read_bytes())],
                root_certificates=client_ca,
                require_client_auth=client_ca is not None,
            )
            port = server_port = self.grpc_server.add_secure_port(address, creds)
        else:
            port = server_port = self.grpc_server.add_insecure_port(address)
        if server_port == 0:
            raise OSError(f"could not bind {address}")
        return port

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start answering (health NOT_SERVING) and load the learner in the background."""
        self.grpc_server.start()
        self._spawn(self._load, "sd2ail-loader")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        def run() -> None:
            _torch_threads_here(self._torch_threads)
            target()

        thread = threading.Thread(target=run, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Block until SERVING (True) or loading failed / timeout (False)."""
        self._ready.wait(timeout_s)
        return self._state is _State.READY

    @property
    def state(self) -> str:
        return self._state.value

    @property
    def load_error(self) -> str:
        return self._load_error

    def _load(self) -> None:
        try:
            learner, meta = self._build_learner()
            self._install(learner, meta)
            self._warm_up()
        except Exception as err:
            logger.exception("server failed to load")
            self._load_error = f"{type(err).__name__}: {err}"
            with self._state_lock:
                if self._state is _State.LOADING:
                    self._state = _State.FAILED
            self._ready.set()
            return
        with self._state_lock:
            if self._state is not _State.LOADING:  # stopped while loading
                return
            self._state = _State.READY
            for name in ("", SERVICE_NAME):
                self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._ready.set()
        d = self.dims
        assert d is not None
        logger.info(
            "serving %s (%s, obs %d, act %d) at model version %d; training %s",
            d.env_id,
            d.algo,
            d.obs_dim,
            d.act_dim,
            self.model.version,
            "on" if self.options.train else "off",
        )

    def _build_learner(self) -> tuple[RewardLearner, dict[str, Any]]:
        source, store = self._source, self._store
        ckpt = None
        if self.options.resume_generation and store is not None:
            ckpt = store.load(self.options.resume_generation)
            logger.info(
                "resuming from checkpoint %s (step %d, named by --resume-from)",
                ckpt.path,
                ckpt.step,
            )
        elif self.options.resume and store is not None:
            if store.generations():
                ckpt = store.load_latest()
                logger.info(
                    "resuming from checkpoint %s (step %d, the latest)", ckpt.path, ckpt.step
                )
            else:
                logger.info("--resume: no checkpoint in %s yet, starting fresh", store.root)
        if isinstance(source, RewardLearner):
            learner = source
        else:
            from sd2ail_reward.demos import read_demos

            demos = read_demos(
                source.demos,
                num_episodes=source.num_demos,
                select=source.select,
                seed=source.demo_seed,
                expected_env_id=source.config.env_id or None,
                episodes=source.episodes,
            )
            self._demo_meta = {
                "path": str(source.demos),
                "selected_episodes": list(demos.attrs.get("selected_episodes", [])),
            }
            if ckpt is not None:
                saved = ckpt.meta.get("demos", {}).get("selected_episodes")
                if saved is not None and saved != self._demo_meta["selected_episodes"]:
                    raise CheckpointError(
                        f"checkpoint {ckpt.path.name} was trained on demo episodes {saved}, "
                        f"this server selected {self._demo_meta['selected_episodes']} from "
                        f"{source.demos}; start it with the same --demos / --num-demos"
                    )
                config = RewardLearner.config_from_state(ckpt.state)
                seed = int(ckpt.state.get("seed", source.seed))
            else:
                config, seed = source.config, source.seed
            learner = RewardLearner(config, demos, device=resolve_device(source.device), seed=seed)
        meta: dict[str, Any] = {}
        if ckpt is not None:
            learner.load_state_dict(ckpt.state)
            meta = ckpt.meta
        return learner, meta

    def _install(self, learner: RewardLearner, meta: dict[str, Any]) -> None:
        cfg = learner.config
        low = learner.normalizer.act_low_A
        high = learner.normalizer.act_high_A
        self.dims = _Dims(
            obs_dim=learner.obs_dim,
            act_dim=learner.act_dim,
            requires_next_obs=bool(cfg.state_only),
            env_id=learner.env_id,
            algo=learner.algo,
            updates_per_transition=float(cfg.disc_updates_per_transition),
            min_agent_size=int(cfg.min_agent_size),
            action_low=tuple(float(v) for v in low),
            action_high=tuple(float(v) for v in high),
        )
        sequences = meta.get("push_sequences", {})
        self._sequences = OrderedDict(
            (str(k), _Sequences.from_state(v)) for k, v in sequences.items()
        )
        total = int(learner.agent.total_added)
        if meta:
            self._last_saved = (learner.n_updates, int(meta.get("total_pushed", total)))
        self._accepted_rows = self._ingested_rows = self._synced_rows = total
        self.learner = learner
        with self.learner_lock:
            self._model = learner.snapshot()
        self._batcher = _Batcher(
            lambda: self.model,
            self.metrics,
            max_batch_rows=self.options.max_batch_rows,
            max_queue_delay_s=self.options.max_queue_delay_ms / 1e3,
            max_queue_size=self.options.max_queue_size,
        )
        self._spawn(self._trainer_loop, "sd2ail-trainer")
        self._spawn(self._reporter_loop, "sd2ail-reporter")

    def _warm_up(self) -> None:
        d = self.dims
        assert d is not None
        rng = np.random.default_rng(0)
        for n in self.options.warmup_rows:
            obs = rng.normal(size=(n, d.obs_dim)).astype(np.float32)
            act = rng.uniform(d.action_low, d.action_high, size=(n, d.act_dim)).astype(np.float32)
            out = self.model.reward(obs, act, obs)
            if not np.isfinite(out).all():
                raise FloatingPointError("warm-up produced a non-finite reward")

    def stop(self, grace_s: float | None = None) -> None:
        """Graceful shutdown: health NOT_SERVING, new calls UNAVAILABLE, in-flight calls finish
        (up to the grace period), trainer stops, final checkpoint."""
        with self._state_lock:
            if self._state in (_State.STOPPING, _State.STOPPED):
                return
            was_ready = self._state is _State.READY
            self._state = _State.STOPPING
            self.health.enter_graceful_shutdown()
        grace = self.options.grace_s if grace_s is None else grace_s
        self.grpc_server.stop(grace).wait()
        self._rpcs_closed = True
        with self._sync_cond:
            self._sync_cond.notify_all()
        self._threads[0].join(timeout=120.0)  # the loader: no thread starts after it ends
        if self._batcher is not None:
            self._batcher.close()
        self._stop_trainer.set()
        self._work.set()
        self._stop_reporter.set()
        for thread in self._threads[1:]:
            thread.join(timeout=60.0)
        if was_ready:
            self._final_checkpoint()
        self._state = _State.STOPPED
        self._ready.set()

    def _final_checkpoint(self) -> None:
        if self._store is None or self.learner is None:
            return
        try:
            with self.learner_lock:
                unchanged = self._last_saved == self._progress_locked()
            if unchanged:
                logger.info("no change since checkpoint %s", self.metrics.last_checkpoint)
                return
            path = self.save_checkpoint()[0]
            logger.info("final checkpoint %s", path)
        except Exception:
            logger.exception("final checkpoint failed")

    # ------------------------------------------------------------------ model and learner

    @property
    def model(self) -> RewardModel:
        model = self._model
        if model is None:
            raise _Abort(grpc.StatusCode.FAILED_PRECONDITION, "no model loaded yet")
        return model

    def require(self) -> _Dims:
        """Dims of a ready server, else the status code for its state."""
        state = self._state
        if state is _State.READY and self.dims is not None:
            return self.dims
        if state in (_State.STOPPING, _State.STOPPED):
            raise _Abort(
                grpc.StatusCode.UNAVAILABLE, "server is shutting down; retry once it is back"
            )
        if state is _State.FAILED:
            raise _Abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"server failed to load: {self._load_error}"
            )
        raise _Abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            "server is still loading (health NOT_SERVING); wait until it is SERVING "
            "(RewardClient.wait_ready())",
        )

    def _owed_locked(self) -> int:
        """Updates owed to pushed transitions (learner lock held)."""
        learner, d = self.learner, self.dims
        assert learner is not None and d is not None
        eligible = max(0, learner.agent.total_added - d.min_agent_size + 1)
        target = math.floor(eligible * d.updates_per_transition + 1e-9)
        return max(0, target - learner.n_updates)

    def _drain_locked(self) -> int:
        """Move accepted pushes into the learner (learner lock held); rows now ingested."""
        with self._push_lock:
            pending, self._pending = self._pending, []
        self._ingest_locked(pending)
        return self._ingested_rows

    def _ingest_locked(self, pending: list[_Push]) -> None:
        """Hand validated pushes to the learner (learner lock held)."""
        learner = self.learner
        assert learner is not None
        for obs, act, next_obs in pending:
            try:
                learner.add_agent(obs, act, next_obs)
            except ValueError:  # validated in the handler; never expected here
                logger.exception("dropping a push the learner refused")
            self._ingested_rows += obs.shape[0]

    def _publish_locked(self) -> None:
        assert self.learner is not None
        self._model = self.learner.snapshot()
        self._since_publish = 0

    def _trainer_loop(self) -> None:
        """The only writer of the learner: ingest pushes, train, publish, checkpoint."""
        every = self.options.checkpoint_every
        while not self._stop_trainer.is_set():
            self._work.clear()
            captured = None
            updated = False
            with self.learner_lock:
                ingested = self._drain_locked()
                learner = self.learner
                assert learner is not None
                if self.options.train and not self._train_error and self._owed_locked() > 0:
                    try:
                        learner.train(1)
                    except Exception as err:
                        logger.exception("training stopped")
                        self._train_error = f"{type(err).__name__}: {err}"
                    else:
                        updated = True
                        self._since_publish += 1
                        if self._since_publish >= self.options.publish_every:
                            self._publish_locked()
                        if self._store is not None and every and learner.n_updates % every == 0:
                            captured = self._capture_locked()
                if not updated:
                    if self._since_publish:
                        self._publish_locked()
                    with self._sync_cond:
                        self._synced_rows = ingested
                        self._sync_cond.notify_all()
            if captured is not None:
                try:
                    self._write_checkpoint(captured)
                except Exception:  # e.g. a full disk: keep serving and training, say so
                    logger.exception("periodic checkpoint failed")
            if not updated:
                self._work.wait(0.5)

    # ------------------------------------------------------------------ pushes and sync

    def accept_push(
        self,
        client_id: str,
        sequence: int,
        obs: np.ndarray,
        act: np.ndarray,
        next_obs: np.ndarray | None,
    ) -> reward_pb2.PushTransitionsResponse:
        rows = obs.shape[0]
        with self._push_lock:
            seen = self._sequences.get(client_id)
            if seen is None:
                seen = _Sequences()
            elif seen.ingested(sequence):
                self._sequences.move_to_end(client_id)
                with self.metrics.lock:
                    self.metrics.duplicate_pushes += 1
                return reward_pb2.PushTransitionsResponse(
                    accepted_rows=0,
                    duplicate=True,
                    last_sequence=seen.high,
                    total_pushed=self._accepted_rows,
                )
            self._charge_quota(client_id, rows)
            seen.add(sequence)
            self._sequences[client_id] = seen
            self._sequences.move_to_end(client_id)
            last = seen.high
            while len(self._sequences) > self.options.max_tracked_clients:
                forgotten, _ = self._sequences.popitem(last=False)
                self._quota.pop(forgotten, None)
            self._pending.append((obs, act, next_obs))
            self._accepted_rows += rows
            total = self._accepted_rows
        with self.metrics.lock:
            self.metrics.push_requests += 1
            self.metrics.push_rows += rows
        audit.debug("push client=%s seq=%d rows=%d", client_id, sequence, rows)
        self._work.set()
        return reward_pb2.PushTransitionsResponse(
            accepted_rows=rows, duplicate=False, last_sequence=last, total_pushed=total
        )

    def _charge_quota(self, client_id: str, rows: int) -> None:
        """Token bucket per client (push lock held); RESOURCE_EXHAUSTED when over."""
        rate = self.options.push_quota
        if rate <= 0:
            return
        capacity = rate * self.options.push_quota_window_s
        now = time.monotonic()
        tokens, then = self._quota.get(client_id, (capacity, now))
        tokens = min(capacity, tokens + (now - then) * rate)
        if rows > tokens:
            self._quota[client_id] = (tokens, now)
            raise _Abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"push quota exceeded for client {client_id!r}: {rows} rows, {int(tokens)} "
                f"allowed now ({rate:g} rows/s, bursts up to {int(capacity)}); nothing was "
                "ingested, retry the same push later",
            )
        self._quota[client_id] = (tokens - rows, now)

    def sync(self, timeout_s: float | None) -> reward_pb2.SyncResponse:
        with self._push_lock:
            target = self._accepted_rows
        self._work.set()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._sync_cond:
            while self._synced_rows < target:
                if self._train_error:
                    raise _Abort(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        f"training stopped after an error ({self._train_error}); "
                        "the server serves its last published model",
                    )
                if self._rpcs_closed:
                    self.require()
                wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
                if wait <= 0:
                    raise _Abort(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"training had consumed {self._synced_rows} of {target} pushed "
                        "transitions when the deadline passed; call Sync again or give it "
                        "more time",
                    )
                self._sync_cond.wait(wait)
        if self._train_error:
            raise _Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"training stopped after an error ({self._train_error}); "
                "the server serves its last published model",
            )
        learner = self.learner
        assert learner is not None
        return reward_pb2.SyncResponse(
            model_version=self.model.version,
            updates=learner.n_updates,
            total_pushed=target,
        )

    # ------------------------------------------------------------------ checkpoints

    def _capture_locked(self) -> _Captured:
        """Learner state + sequences at one moment (learner lock held)."""
        learner = self.learner
        assert learner is not None
        with self._push_lock:
            pending, self._pending = self._pending, []
            sequences = {k: v.state() for k, v in self._sequences.items()}
            accepted = self._accepted_rows
        self._ingest_locked(pending)
        meta = {
            "server_version": __version__,
            "env_id": learner.env_id,
            "algo": learner.algo,
            "model_version": learner.model_version,
            "total_pushed": accepted,
            "push_sequences": sequences,
            "demos": self._demo_meta,
        }
        return _Captured(state=learner.state_dict(), step=learner.n_updates, meta=meta)

    def _progress_locked(self) -> tuple[int, int]:
        """(updates, rows accepted): a checkpoint with the same progress holds the same state."""
        assert self.learner is not None
        with self._push_lock:
            return self.learner.n_updates, self._accepted_rows

    def _write_checkpoint(self, captured: _Captured) -> Path:
        assert self._store is not None
        path = self._store.save(captured.state, step=captured.step, meta=captured.meta)
        self._last_saved = (captured.step, int(captured.meta["total_pushed"]))
        with self.metrics.lock:
            self.metrics.checkpoints_written += 1
            self.metrics.last_checkpoint = path.name
        logger.info("checkpoint %s (step %d)", path.name, captured.step)
        return path

    def save_checkpoint(self) -> tuple[Path, _Captured]:
        if self._store is None:
            raise _Abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "this server has no --checkpoint-dir; restart it with one to save checkpoints",
            )
        with self.learner_lock:
            captured = self._capture_locked()
        return self._write_checkpoint(captured), captured

    # ------------------------------------------------------------------ monitoring

    def stats(self) -> reward_pb2.GetStatsResponse:
        learner = self.learner
        assert learner is not None
        with self.learner_lock:
            learner_stats = learner.stats()
            pending = self._owed_locked() if self.options.train else 0
        serving = self.metrics.message(
            self._batcher.depth() if self._batcher else 0, self.model.version, pending
        )
        return reward_pb2.GetStatsResponse(
            learner={k: float(v) for k, v in learner_stats.items()}, serving=serving
        )

    def _reporter_loop(self) -> None:
        every = self.options.log_every_s
        interval = every if every > 0 else 10.0
        while not self._stop_reporter.wait(interval):
            learner = self.learner
            if learner is None:
                continue
            dt, rates = self.metrics.interval(learner.n_updates)
            if every <= 0:
                continue
            with self.learner_lock:
                stats = learner.stats()
                pending = self._owed_locked() if self.options.train else 0
            m = self.metrics
            with m.lock:
                mean_b = m.sum_batch_requests / max(m.batches, 1)
                q99 = _percentile(m.queue_ms, 99)
                errors = dict(m.errors)
            logger.info(
                "%.0f rewards/s, %.0f pushed rows/s, %.1f updates/s over %.0fs | mean batch "
                "%.1f req, queue p99 %.2f ms | model v%d, %d updates pending | D expert %.3f "
                "agent %.3f pseudo %.3f | buffers agent %d pseudo %d | errors %s",
                rates["rewards_per_s"],
                rates["pushed_rows_per_s"],
                rates["updates_per_s"],
                dt,
                mean_b,
                q99,
                self.model.version,
                pending,
                stats.get("d_reward/expert", float("nan")),
                stats.get("d_reward/agent", float("nan")),
                stats.get("d_reward/pseudo", float("nan")),
                int(stats.get("buffer/agent", 0)),
                int(stats.get("buffer/pseudo", 0)),
                errors or "none",
            )

    # ------------------------------------------------------------------ validation

    def transitions(
        self, request: Any, dims: _Dims, *, with_done: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Decode and validate obs / action / next_obs (/ done) or raise INVALID_ARGUMENT."""
        limit = self.options.max_request_rows
        try:
            obs = decode_matrix(
                request.obs if request.HasField("obs") else None,
                "obs",
                dims.obs_dim,
                max_rows=limit,
            )
            rows = obs.shape[0]
            act = decode_matrix(
                request.action if request.HasField("action") else None,
                "action",
                dims.act_dim,
                max_rows=limit,
            )
            if act.shape[0] != rows:
                raise TensorError(f"action: expected {rows} rows to match obs, got {act.shape[0]}")
            next_obs = None
            if request.HasField("next_obs"):
                next_obs = decode_matrix(request.next_obs, "next_obs", dims.obs_dim, max_rows=limit)
                if next_obs.shape[0] != rows:
                    raise TensorError(
                        f"next_obs: expected {rows} rows to match obs, got {next_obs.shape[0]}"
                    )
            elif dims.requires_next_obs:
                raise TensorError(
                    "next_obs: required by this server's state-only discriminator "
                    "(GetInfo.requires_next_obs), got none"
                )
            if with_done and request.HasField("done"):
                decode_vector(request.done, "done", rows)
        except TensorError as err:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None
        return obs, act, next_obs


def _check_client(client_id: str, sequence: int) -> None:
    if not client_id:
        raise _Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            "client_id: required, got none (any stable id for the pushing client, e.g. a UUID)",
        )
    if len(client_id) > MAX_CLIENT_ID_CHARS or not all(33 <= ord(c) <= 126 for c in client_id):
        raise _Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"client_id: expected 1 to {MAX_CLIENT_ID_CHARS} printable ASCII characters without "
            f"spaces, got {len(client_id)} characters",
        )
    if sequence < 1:
        raise _Abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            "sequence: expected >= 1, strictly increasing per client_id, got 0",
        )


class _Servicer(reward_pb2_grpc.RewardServiceServicer):
    """RPC handlers: validate, then delegate to the RewardServer."""

    def __init__(self, server: RewardServer) -> None:
        self._server = server

    @_rpc
    def GetInfo(
        self, request: reward_pb2.GetInfoRequest, context: grpc.ServicerContext
    ) -> reward_pb2.GetInfoResponse:
        s, o = self._server, self._server.options
        d = s.dims
        model = s._model
        return reward_pb2.GetInfoResponse(
            env_id=d.env_id if d else "",
            algo=d.algo if d else "",
            obs_dim=d.obs_dim if d else 0,
            act_dim=d.act_dim if d else 0,
            model_version=model.version if model else 0,
            ready=s.state == "ready",
            requires_next_obs=d.requires_next_obs if d else False,
            max_request_rows=o.max_request_rows,
            max_message_bytes=o.max_message_bytes,
            push_quota_rows_per_s=o.push_quota,
            updates_per_transition=d.updates_per_transition if d else 0.0,
            training=o.train,
            server_version=__version__,
            action_low=d.action_low if d else (),
            action_high=d.action_high if d else (),
        )

    @_rpc
    def ComputeReward(
        self, request: reward_pb2.ComputeRewardRequest, context: grpc.ServicerContext
    ) -> reward_pb2.ComputeRewardResponse:
        s = self._server
        dims = s.require()
        obs, act, next_obs = s.transitions(request, dims, with_done=False)
        model = s.model
        try:
            x = model.normalizer.rows(obs, act, next_obs)
        except ValueError as err:
            raise _Abort(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None
        batcher = s._batcher
        if s.options.batching and batcher is not None:
            req = batcher.submit(x, _remaining(context), context)
            assert req.result is not None
            reward, version = req.result, req.version
        else:
            start = time.monotonic()
            reward = _score_rows(model, x)
            if not np.isfinite(reward).all():
                raise FloatingPointError("the model produced a non-finite reward")
            s.metrics.batch([x.shape[0]], [0.0], (time.monotonic() - start) * 1e3)
            version = model.version
        return reward_pb2.ComputeRewardResponse(reward=to_tensor(reward), model_version=version)

    @_rpc
    def PushTransitions(
        self, request: reward_pb2.PushTransitionsRequest, context: grpc.ServicerContext
    ) -> reward_pb2.PushTransitionsResponse:
        s = self._server
        dims = s.require()
        _check_client(request.client_id, request.sequence)
        obs, act, next_obs = s.transitions(request, dims, with_done=True)
        # The arrays are views of the request's bytes; copy before they outlive the call.
        return s.accept_push(
            request.client_id,
            request.sequence,
            np.array(obs),
            np.array(act),
            None if next_obs is None else np.array(next_obs),
        )

    @_rpc
    def Sync(
        self, request: reward_pb2.SyncRequest, context: grpc.ServicerContext
    ) -> reward_pb2.SyncResponse:
        s = self._server
        s.require()
        limits = [t for t in (_remaining(context), request.timeout_ms / 1e3 or None) if t]
        return s.sync(min(limits) if limits else None)

    @_rpc
    def GetStats(
        self, request: reward_pb2.GetStatsRequest, context: grpc.ServicerContext
    ) -> reward_pb2.GetStatsResponse:
        s = self._server
        s.require()
        return s.stats()

    @_rpc
    def SaveCheckpoint(
        self, request: reward_pb2.SaveCheckpointRequest, context: grpc.ServicerContext
    ) -> reward_pb2.SaveCheckpointResponse:
        s = self._server
        s.require()
        path, captured = s.save_checkpoint()
        return reward_pb2.SaveCheckpointResponse(
            generation=path.name,
            step=captured.step,
            total_pushed=int(captured.meta["total_pushed"]),
        )


# ------------------------------------------------------------------------------ entry points


def build_server(
    source: RewardLearner | LearnerSpec, options: ServeOptions | None = None
) -> tuple[RewardServer, int]:
    """Bind, start answering (health NOT_SERVING) and load the learner in the background.

    `source` is a ready RewardLearner (in-process use, tests) or a LearnerSpec (read demos,
    build or resume the learner). Returns the server and its bound port; `server.wait_ready()`
    blocks until it is SERVING. Raises ValueError for an unsafe configuration (e.g. a
    non-loopback host without a token file) before anything listens.
    """
    server = RewardServer(source, options or ServeOptions())
    server.start()
    return server, server.port


_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def serve(
    source: RewardLearner | LearnerSpec,
    options: ServeOptions,
    *,
    announce: Callable[[int], None] | None = None,
) -> int:
    """Run until SIGTERM / SIGINT, then shut down gracefully. Returns the exit status:
    0 after a graceful shutdown, 1 if the learner failed to load."""
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()
        for sig in _SIGNALS:  # a second signal ends the process the hard way
            signal.signal(sig, signal.SIG_DFL)

    for sig in _SIGNALS:
        signal.signal(sig, on_signal)
    server, port = build_server(source, options)
    if announce is not None:
        announce(port)
    logger.info("listening on %s:%d", options.host, port)
    while not stop.is_set():
        if server.state == "failed":
            logger.error("not serving: %s", server.load_error)
            server.stop(grace_s=0.0)
            return 1
        stop.wait(0.2)
    logger.info("signal %s: shutting down gracefully", received[0] if received else "?")
    server.stop()
    logger.info("stopped")
    return 0
