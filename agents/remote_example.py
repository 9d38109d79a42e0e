"""Remote example: the reward server in one process, the agent in another, connected by an
address and a token.

Terminal 1, the server (creates the token file with one fresh write token if it is missing)::

    python agents/remote_example.py serve --token-file ~/.sd2ail-tokens --port 50051
    # -> SD2AIL_SERVER_ADDRESS=127.0.0.1:50051 (its log: --log-file, or a temporary file)
    # any other flag goes to `sd2ail-reward serve` (e.g. --hidden-dim 64, --demos ...)

Terminal 2, the agent (a random policy here; any agent works the same way, see
agents/minimal_sac.py --server)::

    python agents/remote_example.py agent --address 127.0.0.1:50051 \\
        --token-file ~/.sd2ail-tokens --steps 400

The agent wraps its env with ``SD2AILRewardWrapper(env, reward=RewardClient(address, token=...))``,
pushes its transitions (the server trains the discriminator on them) and prints, per episode,
the learned return beside the env's own return, then the server's statistics.

Token file: lines ``write <token>`` (may push, sync, checkpoint) or ``read <token>`` (may only
score and read stats), chmod 600. Make a token with
``python -c "import secrets; print(secrets.token_urlsafe(32))"``.

Across two machines, securely. The server binds 127.0.0.1 by default; a non-loopback bind is
refused unless it has --token-file AND TLS (--tls-cert/--tls-key; --allow-insecure-remote
overrides this, and then tokens travel in plaintext: do not). Either:

1. TLS. On the server machine make a certificate whose subjectAltName is the address the agent
   dials, e.g. ``openssl req -x509 -newkey rsa:3072 -nodes -days 365 -keyout server.key
   -out server.pem -subj /CN=reward -addext subjectAltName=IP:10.0.0.5``, then::

       python agents/remote_example.py serve --host 0.0.0.0 --port 50051 \\
           --token-file tokens --tls-cert server.pem --tls-key server.key

   Copy ``server.pem`` (public) and the token (secret; scp, never a chat or a repo) to the agent
   machine, and run::

       python agents/remote_example.py agent --address 10.0.0.5:50051 \\
           --token-file tokens --tls-ca server.pem

   Add ``--tls-client-ca ca.pem`` on the server to require client certificates too (mTLS). Give
   agents that only need rewards a ``read`` token.
2. An SSH tunnel. Keep the server on 127.0.0.1 and run
   ``ssh -N -L 50051:127.0.0.1:50051 server-host`` on the agent machine; the agent then dials
   127.0.0.1:50051 as in the local example (the token is still required).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Annotated

import gymnasium as gym
import numpy as np
import tyro

from sd2ail_reward import RewardClient, SD2AILRewardWrapper
from sd2ail_reward.flags import parse_known
from sd2ail_reward.spawn import LocalServer

ADDRESS_LINE = "SD2AIL_SERVER_ADDRESS"


@dataclass(frozen=True)
class ServeCommand:
    """Start the reward server; any other flag goes to `sd2ail-reward serve`."""

    token_file: Path
    """Token file; created with one fresh write token (mode 600) if missing."""
    host: str = "127.0.0.1"
    """Bind address."""
    port: int = 0
    """TCP port; 0 picks a free one."""
    demos: Path = Path("demos/Pendulum-v1.zarr")
    """Demo store of the server."""
    log_file: Path | None = None
    """Server log (None: a temporary file, kept on failure)."""


@dataclass(frozen=True)
class AgentCommand:
    """Run a short agent loop against a server."""

    address: str
    """host:port printed by `serve`."""
    token_file: Path
    """File holding the token."""
    tls_ca: Path | None = None
    """PEM certificate(s) to verify a TLS server (None: plaintext)."""
    steps: int = 400
    """Env steps."""
    push_batch: int = 100
    """Transitions per push."""
    seed: int = 0
    """Seed of the env's resets and of the random actions."""


@dataclass(frozen=True)
class Args:
    """`serve` or `agent`, with its flags."""

    command: tyro.conf.OmitSubcommandPrefixes[
        Annotated[ServeCommand, tyro.conf.subcommand("serve")]
        | Annotated[AgentCommand, tyro.conf.subcommand("agent")]
    ]
    """The process to run."""


def parse_args(argv: Sequence[str] | None = None) -> tuple[ServeCommand | AgentCommand, list[str]]:
    """The command and the words that are not its flags (`serve` hands them on)."""
    args, extra = parse_known(Args, argv, description=(__doc__ or "").split("\n\n")[0])
    return args.command, extra


def read_token(path: Path) -> tuple[str, str]:
    """(role, token) of the file's first write token, else of its first read token."""
    entries = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    entries = [e for e in entries if len(e) == 2 and not e[0].startswith("#")]
    for role in ("write", "read"):
        for found, token in entries:
            if found == role:
                return role, token
    raise ValueError(f"{path}: no 'write <token>' or 'read <token>' line")


def serve(args: ServeCommand, extra: list[str]) -> int:
    """Run `sd2ail-reward serve` as a child (the library's `LocalServer`: its own session, so a
    terminal's Ctrl-C reaches only this process), print its address, and stop it gracefully on
    SIGTERM / SIGINT. Returns the server's exit status."""
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    created = not args.token_file.exists()
    server = LocalServer(
        ["--demos", str(args.demos), *extra],
        args.token_file,  # created with one fresh write token (mode 600) if missing
        args.log_file,
        host=args.host,
        port=args.port,
        wait_ready=False,  # the agent's client waits for SERVING (and may need TLS to ask)
    )
    if created:
        print(f"wrote a new write token to {args.token_file}", flush=True)
    host = args.host if args.host not in ("0.0.0.0", "::") else "<this-host>"
    print(f"server log: {server.log_path}", flush=True)
    print(f"{ADDRESS_LINE}={host}:{server.port}", flush=True)
    while not stop.is_set() and server.proc.poll() is None:
        stop.wait(0.2)
    return server.stop()


def agent(args: AgentCommand) -> int:
    """A random policy trained against nothing; it only shows the wrapper's plumbing."""
    role, token = read_token(args.token_file)
    client = RewardClient(args.address, token=token, root_certificates=args.tls_ca)
    info = client.wait_ready(timeout_s=120)
    print(f"connected to {args.address}: {info.env_id}, algo {info.algo}, token role {role}")
    env = SD2AILRewardWrapper(
        gym.make(info.env_id), reward=client, push=role == "write", push_batch=args.push_batch
    )
    env.action_space.seed(args.seed)
    env.reset(seed=args.seed)
    learned, true = [], []
    ep_learned = ep_true = 0.0
    for _ in range(args.steps):
        _, rew, term, trunc, step_info = env.step(env.action_space.sample())
        learned.append(float(rew))
        true.append(step_info["env_reward"])
        ep_learned, ep_true = ep_learned + float(rew), ep_true + step_info["env_reward"]
        if term or trunc:
            print(f"episode: learned return {ep_learned:9.2f}   env return {ep_true:9.2f}")
            ep_learned = ep_true = 0.0
            env.reset()
    env.close()  # pushes the last partial batch
    corr = np.corrcoef(learned, true)[0, 1] if np.std(learned) > 0 else float("nan")
    print(
        f"{args.steps} steps: mean learned reward {np.mean(learned):.3f}, "
        f"mean env reward {np.mean(true):.3f}, correlation {corr:.3f}"
    )
    if role == "write":
        synced = client.sync()
        print(
            f"pushed {env.n_pushed}; server trained {synced['updates']} updates on "
            f"{synced['total_pushed']} pushed transitions"
        )
    stats = client.stats()["learner"]
    print(
        f"D on expert rows {stats['d_reward/expert']:.3f}, on agent rows "
        f"{stats['d_reward/agent']:.3f}"
    )
    client.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    command, extra = parse_args(argv)
    if isinstance(command, ServeCommand):
        return serve(command, extra)
    if extra:
        print(
            f"remote_example.py agent: unrecognized arguments: {' '.join(extra)}", file=sys.stderr
        )
        return 2
    return agent(command)


if __name__ == "__main__":
    sys.exit(main())
