"""`sd2ail-reward serve`: its flags, and the learner flags every command that builds a
learner shares, mapped onto `ServeOptions`, `LearnerSpec` and `LearnerConfig`."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sd2ail_reward.config import ALGOS, LearnerConfig, preset, preset_for_env
from sd2ail_reward.config import replace as replace_config

if TYPE_CHECKING:  # the server package pulls in grpc: only `serve` needs it at run time
    from sd2ail_reward.server import ServeOptions

PORT_LINE = "SD2AIL_SERVER_PORT"
"""`serve` prints ``SD2AIL_SERVER_PORT=<port>`` on stdout (flushed) once it listens."""


def add_learner_args(parser: argparse.ArgumentParser) -> None:
    """Flags that choose and shape the learner (the preset's values unless given)."""
    g = parser.add_argument_group("learner (defaults: the preset's values)")
    g.add_argument(
        "--algo", choices=ALGOS, default="sd2ail", help="algorithm (default: %(default)s)"
    )
    g.add_argument(
        "--preset",
        default=None,
        help="per-env hyperparameters: hopper, walker2d, halfcheetah, ant, pendulum "
        "(default: the one matching the demo store's env)",
    )
    g.add_argument("--seed", type=int, default=0, help="learner seed (default: %(default)s)")
    g.add_argument(
        "--device",
        default="auto",
        help="torch device for the discriminator: auto (cuda if available, else cpu), cpu, "
        "cuda, cuda:1, ... (default: %(default)s)",
    )
    g.add_argument("--hidden-dim", type=int, help="width of the discriminator network")
    g.add_argument("--lr", type=float, help="discriminator Adam learning rate")
    g.add_argument("--expert-batch", type=int, help="expert rows per discriminator update")
    g.add_argument("--agent-batch", type=int, help="agent rows per discriminator update")
    g.add_argument(
        "--min-agent-size", type=int, help="pushed transitions needed before training starts"
    )
    g.add_argument("--agent-capacity", type=int, help="capacity of the agent transition buffer")
    g.add_argument(
        "--updates-per-transition",
        type=float,
        help="discriminator updates per pushed transition (disc_updates_per_transition)",
    )
    g.add_argument(
        "--candidates-per-update", type=int, help="pseudo-expert candidates per update (SD2AIL)"
    )
    g.add_argument(
        "--refresh-every", type=int, help="updates between pseudo-expert generation rounds"
    )
    g.add_argument("--diffusion-steps", type=int, help="diffusion steps T of the discriminator")
    g.add_argument(
        "--compute-dtype",
        choices=("float32", "bfloat16"),
        help="the discriminator's forward passes on the CPU: bfloat16 (autocast; ~1.9x cheaper "
        "updates on CPUs with native bf16, refused elsewhere; not the paper's arithmetic) or "
        "float32 (default)",
    )


def learner_config(args: argparse.Namespace, env_id: str) -> LearnerConfig:
    """The preset for `env_id` (or --preset) and --algo, with the shaping flags applied."""
    name = args.preset or preset_for_env(env_id)
    config = preset(name, args.algo)
    if config.env_id != env_id:
        raise ValueError(
            f"preset {name!r} is for {config.env_id}, but the demo store holds {env_id} demos"
        )
    diffusion, disc, synth = config.diffusion, config.discriminator, config.synthetic
    if args.hidden_dim is not None:
        diffusion = dataclasses.replace(diffusion, hidden_dim=args.hidden_dim)
        disc = dataclasses.replace(disc, mlp_hidden_dim=args.hidden_dim)
    if args.diffusion_steps is not None:
        diffusion = dataclasses.replace(diffusion, n_timesteps=args.diffusion_steps)
    if args.compute_dtype is not None:
        disc = dataclasses.replace(disc, compute_dtype=args.compute_dtype)
    for flag, name in (("lr", "lr"), ("expert_batch", "expert_batch")):
        if getattr(args, flag) is not None:
            disc = dataclasses.replace(disc, **{name: getattr(args, flag)})
    if args.agent_batch is not None:
        disc = dataclasses.replace(disc, agent_batch=args.agent_batch)
    if args.candidates_per_update is not None:
        synth = dataclasses.replace(synth, candidates_per_update=args.candidates_per_update)
    if args.refresh_every is not None:
        synth = dataclasses.replace(synth, refresh_every=args.refresh_every)
    top: dict[str, object] = {}
    for flag, name in (
        ("min_agent_size", "min_agent_size"),
        ("agent_capacity", "agent_capacity"),
        ("updates_per_transition", "disc_updates_per_transition"),
    ):
        if getattr(args, flag) is not None:
            top[name] = getattr(args, flag)
    return replace_config(config, diffusion=diffusion, discriminator=disc, synthetic=synth, **top)


def add_serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--demos", type=Path, required=True, help="zarr demo store (e.g. demos/Hopper-v5.zarr)"
    )
    parser.add_argument(
        "--num-demos",
        type=int,
        default=None,
        help="expert episodes to use, the store's first ones (default: all)",
    )
    parser.add_argument(
        "--demo-episodes",
        type=int,
        nargs="+",
        default=None,
        help="explicit store indices of the expert episodes to use (overrides --num-demos)",
    )
    parser.add_argument(
        "--demo-subsample",
        type=int,
        default=1,
        help="keep every N-th (s, a) pair of each demo episode (GAIL's protocol uses 20; "
        "default: %(default)s, all)",
    )
    add_learner_args(parser)
    net = parser.add_argument_group("network and security")
    net.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: %(default)s); any non-loopback address needs "
        "--token-file and --tls-cert/--tls-key",
    )
    net.add_argument(
        "--port",
        type=int,
        default=0,
        help=f"TCP port; 0 picks a free one. The bound port is printed as {PORT_LINE}=<port> "
        "(default: %(default)s)",
    )
    net.add_argument(
        "--token-file",
        type=Path,
        help="tokens, one per line as '<role> <token>', role 'read' (GetInfo, ComputeReward, "
        "GetStats) or 'write' (everything); clients send 'authorization: Bearer <token>'",
    )
    net.add_argument("--tls-cert", type=Path, help="PEM certificate chain (serve TLS)")
    net.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    net.add_argument(
        "--tls-client-ca", type=Path, help="PEM CA bundle: require client certificates (mTLS)"
    )
    net.add_argument(
        "--allow-insecure-remote",
        action="store_true",
        help="allow plaintext on a non-loopback address (tokens travel unencrypted)",
    )
    net.add_argument(
        "--reflection",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="gRPC server reflection (default: on for loopback binds only)",
    )
    net.add_argument(
        "--push-quota",
        type=float,
        default=0.0,
        help="rows per second one client may push, averaged over --push-quota-window; 0 = "
        "unlimited (default: %(default)s)",
    )
    net.add_argument(
        "--push-quota-window",
        type=float,
        default=10.0,
        help="seconds the push quota is averaged over: a client may burst up to quota x "
        "window rows (default: %(default)s)",
    )
    b = parser.add_argument_group("batching and limits")
    b.add_argument(
        "--batching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="server-side dynamic batching of ComputeReward (default: on)",
    )
    b.add_argument(
        "--max-batch",
        type=int,
        default=4096,
        help="most rows per batched evaluation (default: %(default)s)",
    )
    b.add_argument(
        "--max-delay-ms",
        type=float,
        default=0.0,
        help="how long the batcher waits for more requests after the first (default: "
        "%(default)s: batch whatever queued while the model was busy)",
    )
    b.add_argument(
        "--queue-size",
        type=int,
        default=1024,
        help="most requests waiting for the batcher; more get RESOURCE_EXHAUSTED "
        "(default: %(default)s)",
    )
    b.add_argument(
        "--max-concurrent-rpcs",
        type=int,
        default=1024,
        help="RPCs in progress at once; more get RESOURCE_EXHAUSTED (default: %(default)s)",
    )
    b.add_argument(
        "--max-tracked-clients",
        type=int,
        default=100_000,
        help="client ids whose last push sequence is remembered for de-duplication, least "
        "recently pushing forgotten first (default: %(default)s)",
    )
    b.add_argument(
        "--max-request-rows",
        type=int,
        default=65536,
        help="largest batch one request may carry (default: %(default)s)",
    )
    b.add_argument(
        "--max-message-mb",
        type=float,
        default=64.0,
        help="largest gRPC message in MiB (default: %(default)s)",
    )
    b.add_argument(
        "--workers", type=int, default=64, help="gRPC handler threads (default: %(default)s)"
    )
    b.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch intra-op threads; 0 = auto: half the CPU cores, 1 to 4 (default: "
        "%(default)s). Oversubscribed OpenMP threads make small batches many times slower",
    )
    t = parser.add_argument_group("training and state")
    t.add_argument(
        "--train",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train on pushed transitions (--no-train: serve a frozen reward)",
    )
    t.add_argument(
        "--publish-every",
        type=int,
        default=10,
        help="publish new weights to the reward path every N updates (default: %(default)s)",
    )
    t.add_argument("--checkpoint-dir", type=Path, help="where checkpoint generations go")
    t.add_argument(
        "--checkpoint-every",
        type=int,
        default=1000,
        help="checkpoint every N discriminator updates; 0 = only on SaveCheckpoint and "
        "shutdown (default: %(default)s)",
    )
    t.add_argument(
        "--keep-checkpoints", type=int, default=3, help="generations kept (default: %(default)s)"
    )
    t.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest good checkpoint in --checkpoint-dir (its learner "
        "configuration wins over the learner flags; fresh start if there is none)",
    )
    t.add_argument(
        "--resume-from",
        metavar="GENERATION",
        help="continue from exactly this generation of --checkpoint-dir (e.g. gen-000017000), "
        "failing if it cannot load; `train --resume` uses it to pair the server's state with "
        "its own checkpoint",
    )
    t.add_argument(
        "--log-every",
        type=float,
        default=10.0,
        help="seconds between throughput/learner log lines; 0 = none (default: %(default)s)",
    )
    t.add_argument(
        "--grace",
        type=float,
        default=5.0,
        help="seconds in-flight calls get to finish on SIGTERM/SIGINT (default: %(default)s)",
    )


def serve_options(args: argparse.Namespace) -> ServeOptions:
    """The `serve` flags as `ServeOptions` (tested: with no flags given, its defaults)."""
    from sd2ail_reward.server import ServeOptions

    return ServeOptions(
        host=args.host,
        port=args.port,
        batching=args.batching,
        max_batch_rows=args.max_batch,
        max_queue_delay_ms=args.max_delay_ms,
        max_queue_size=args.queue_size,
        max_request_rows=args.max_request_rows,
        max_message_bytes=int(args.max_message_mb * (1 << 20)),
        workers=args.workers,
        max_concurrent_rpcs=args.max_concurrent_rpcs,
        token_file=args.token_file,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        allow_insecure_remote=args.allow_insecure_remote,
        reflection=args.reflection,
        train=args.train,
        publish_every=args.publish_every,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints,
        resume=args.resume,
        resume_generation=args.resume_from,
        push_quota=args.push_quota,
        push_quota_window_s=args.push_quota_window,
        max_tracked_clients=args.max_tracked_clients,
        log_every_s=args.log_every,
        grace_s=args.grace,
    )


def run_serve(args: argparse.Namespace) -> int:
    import torch

    from sd2ail_reward.demos import read_demos
    from sd2ail_reward.server import LearnerSpec, TokenFileError, serve

    torch.set_num_threads(args.torch_threads or auto_torch_threads())
    try:
        env_id = read_demos_env(args.demos, read_demos)
        config = learner_config(args, env_id)
        options = serve_options(args)
        spec = LearnerSpec(
            demos=args.demos,
            config=config,
            num_demos=args.num_demos,
            episodes=None if args.demo_episodes is None else tuple(args.demo_episodes),
            subsample=args.demo_subsample,
            seed=args.seed,
            device=args.device,
        )

        def announce(port: int) -> None:
            print(f"{PORT_LINE}={port}", flush=True)

        return serve(spec, options, announce=announce)
    except (ValueError, FileNotFoundError, TokenFileError, OSError) as err:
        print(f"sd2ail-reward serve: error: {err}", file=sys.stderr, flush=True)
        return 2


def auto_torch_threads() -> int:
    """Half the cores, between 1 and 4: the batcher and the trainer each run torch, and
    oversubscribed OpenMP threads spin against each other (and against other processes)."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def read_demos_env(path: Path, read: Callable[..., object]) -> str:
    """The env id of a demo store (ValueError / FileNotFoundError if it is unusable)."""
    demos = read(path, num_episodes=1)
    return str(demos.env_id)  # type: ignore[attr-defined]
