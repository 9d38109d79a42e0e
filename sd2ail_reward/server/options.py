"""What a server is told: how it listens, batches, trains, checkpoints and authenticates
(`ServeOptions`), and where its learner comes from (`LearnerSpec`).

Plain frozen dataclasses and the checks that refuse an unsafe or inconsistent combination before
anything binds; no gRPC, no threads. `ServeOptions`' fields are also `serve`'s flags (tyro), so
their docstrings are its help.
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro
from tyro.constructors import PrimitiveConstructorSpec

from sd2ail_reward.config import LearnerConfig

__all__ = [
    "LearnerSpec",
    "ServeOptions",
    "check_options",
    "is_loopback",
    "package_version",
    "resolve_device",
]


def package_version() -> str:
    """The installed sd2ail-reward version (reported by GetInfo and kept in checkpoints)."""
    try:
        return importlib.metadata.version("sd2ail-reward")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


MEBIBYTES = PrimitiveConstructorSpec(
    nargs=1,
    metavar="MIB",
    instance_from_str=lambda args: int(float(args[0]) * (1 << 20)),
    is_instance=lambda value: isinstance(value, int),
    str_from_instance=lambda value: [f"{value / (1 << 20):g}"],
)
"""A byte count given in MiB on the command line."""


@dataclass(frozen=True, kw_only=True)
class ServeOptions:
    """How the server listens, batches, trains, checkpoints and authenticates."""

    host: str = "127.0.0.1"
    """Address to bind; not loopback needs `token_file`, and TLS or `allow_insecure_remote`."""
    port: int = 0
    """TCP port; 0 picks a free one (see `RewardServer.port`)."""
    batching: bool = True
    """Server-side dynamic batching of ComputeReward; False scores each request in its handler."""
    max_batch_rows: Annotated[int, tyro.conf.arg(name="max-batch")] = 4096
    """Most rows in one batched model evaluation (a single larger request runs alone)."""
    max_queue_delay_ms: Annotated[float, tyro.conf.arg(name="max-delay-ms")] = 0.0
    """Batcher's wait (ms) for more requests; 0 batches what queued while the model was busy."""
    max_queue_size: Annotated[int, tyro.conf.arg(name="queue-size")] = 1024
    """Most ComputeReward requests waiting in the batcher queue; more get RESOURCE_EXHAUSTED."""
    max_request_rows: int = 65536
    """Largest batch (rows) one ComputeReward / PushTransitions request may carry."""
    max_message_bytes: Annotated[int, MEBIBYTES, tyro.conf.arg(name="max-message-mb")] = 64 << 20
    """Largest gRPC message, given in MiB as a flag; larger ones get RESOURCE_EXHAUSTED."""
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
    sync_torch_threads: Annotated[int, tyro.conf.arg(name="sync-threads")] = 0
    """Torch threads of the trainer while a client waits in Sync (0: the server's count). For
    a server whose one agent idles in Sync, as `train`'s local one does at 1:1: the trainer
    may then use that agent's core too."""
    checkpoint_dir: Path | None = None
    """Where checkpoint generations go (the only directory the server writes)."""
    checkpoint_every: int = 1000
    """Write a checkpoint every this many discriminator updates (0 = only on request/shutdown)."""
    keep_checkpoints: int = 3
    """Generations kept in checkpoint_dir."""
    resume: bool = False
    """Continue from the latest good checkpoint in checkpoint_dir (fresh if there is none)."""
    resume_generation: Annotated[
        str | None, tyro.conf.arg(name="resume-from", metavar="GENERATION")
    ] = None
    """Continue from exactly this generation of checkpoint_dir (an error if it cannot load)."""
    push_quota: float = 0.0
    """Rows per second one client_id may push, averaged over `push_quota_window_s` (0 = off)."""
    push_quota_window_s: Annotated[float, tyro.conf.arg(name="push-quota-window")] = 10.0
    """Window of the push quota: a client may burst up to push_quota * window rows."""
    max_tracked_clients: int = 100_000
    """Client ids whose last sequence is remembered (least recently pushing forgotten first)."""
    log_every_s: Annotated[float, tyro.conf.arg(name="log-every")] = 10.0
    """Interval of the one-line throughput/learner log and of GetStats' rates (0 = no log)."""
    grace_s: Annotated[float, tyro.conf.arg(name="grace")] = 5.0
    """Graceful shutdown: how long in-flight RPCs may take to finish."""
    warmup_rows: tyro.conf.Suppress[tuple[int, ...]] = (1, 64)
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
    subsample: int = 1
    """Keep every n-th (s, a) pair of each episode (`DemoSet.subsampled`; 1 keeps all)."""
    seed: int = 0
    device: str = "auto"


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'; anything else unchanged."""
    if device == "auto":
        import torch

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


def check_options(o: ServeOptions) -> None:
    """ValueError for an unsafe or inconsistent configuration, before anything listens."""
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
    if o.sync_torch_threads < 0:
        raise ValueError(f"sync_torch_threads must be >= 0, got {o.sync_torch_threads}")
    if o.publish_every < 1 or o.checkpoint_every < 0 or o.push_quota < 0:
        raise ValueError("publish_every must be >= 1, checkpoint_every and push_quota >= 0")
