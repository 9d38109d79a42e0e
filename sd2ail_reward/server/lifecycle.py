"""The server's life: bind, answer health, start the host, stop gracefully; `serve` for the CLI.

Health (`grpc.health.v1`): NOT_SERVING while loading and warming up, SERVING after,
NOT_SERVING from the first moment of a graceful shutdown. Plaintext only on loopback by
default; a non-loopback bind needs a token file and TLS (`options.check_options`).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from concurrent import futures
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from sd2ail_reward.learner import RewardLearner, RewardModel
from sd2ail_reward.rpc import SERVICE_NAME, reward_pb2_grpc
from sd2ail_reward.server.auth import AuthInterceptor, load_tokens
from sd2ail_reward.server.host import LearnerHost, State
from sd2ail_reward.server.metrics import ServingMetrics
from sd2ail_reward.server.options import LearnerSpec, ServeOptions, check_options, is_loopback
from sd2ail_reward.server.servicer import RewardServicer
from sd2ail_reward.server.threads import torch_threads_here

__all__ = ["RewardServer", "build_server", "serve"]

logger = logging.getLogger(__name__)

_HEALTH_NAMES = ("", SERVICE_NAME)


class RewardServer:
    """One learner served over gRPC. Create with `build_server`; stop with `stop()`.

    Raises ValueError for an unsafe configuration (e.g. a non-loopback host without a token
    file) and OSError when the address cannot be bound, before anything listens."""

    def __init__(self, source: RewardLearner | LearnerSpec, options: ServeOptions) -> None:
        check_options(options)
        self.options = options
        self.metrics = ServingMetrics()
        self.health = health.HealthServicer(experimental_non_blocking=True)
        for name in _HEALTH_NAMES:
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.host = LearnerHost(source, options, self.metrics, on_ready=self._on_ready)
        self.grpc_server = self._make_grpc_server()
        self.port = self._bind()

    def _on_ready(self) -> None:
        for name in _HEALTH_NAMES:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def _make_grpc_server(self) -> grpc.Server:
        o = self.options
        interceptors: list[grpc.ServerInterceptor] = []
        if o.token_file is not None:
            interceptors.append(AuthInterceptor(load_tokens(o.token_file), self.metrics.error))
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=o.workers,
                thread_name_prefix="sd2ail-rpc",
                initializer=torch_threads_here,
                initargs=(self.host.torch_threads,),
            ),
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", o.max_message_bytes),
                ("grpc.max_send_message_length", o.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=o.max_concurrent_rpcs,
        )
        reward_pb2_grpc.add_RewardServiceServicer_to_server(RewardServicer(self.host), server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if is_loopback(o.host) if o.reflection is None else o.reflection:
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
            port = self.grpc_server.add_secure_port(address, creds)
        else:
            port = self.grpc_server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"could not bind {address}")
        return port

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start answering (health NOT_SERVING) and load the learner in the background."""
        self.grpc_server.start()
        self.host.start()

    def wait_ready(self, timeout_s: float | None = None) -> bool:
        """Block until SERVING (True) or loading failed / timeout (False)."""
        return self.host.wait_ready(timeout_s)

    @property
    def state(self) -> str:
        """loading, ready, stopping, stopped or failed."""
        return self.host.state

    @property
    def load_error(self) -> str:
        return self.host.load_error

    @property
    def model(self) -> RewardModel:
        """The model ComputeReward scores with now."""
        return self.host.model

    def stop(self, grace_s: float | None = None) -> None:
        """Graceful shutdown: health NOT_SERVING, new calls UNAVAILABLE, in-flight calls finish
        (up to the grace period), trainer stops, final checkpoint."""
        previous = self.host.begin_stop()
        if previous in (State.STOPPING, State.STOPPED):
            return
        self.health.enter_graceful_shutdown()
        grace = self.options.grace_s if grace_s is None else grace_s
        self.grpc_server.stop(grace).wait()
        self.host.stop(checkpoint=previous is State.READY)


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
