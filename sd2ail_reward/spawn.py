"""Start `sd2ail-reward serve` as a child process and stop it again: the one way the project
does it (train, the examples, the benchmarks and the tests all use `LocalServer`).

    with LocalServer(["--demos", "demos/Pendulum-v1.zarr"], log_path="server.log") as server:
        client = server.client()          # RewardClient(server.address, token=server.token)
        ...                               # leaving the block: SIGTERM, wait, exit status 0

What it promises, and why:

* The child binds 127.0.0.1 with ``--port 0`` (no port races) and prints
  ``SD2AIL_SERVER_PORT=<port>``; every read of that line has a deadline, so a child that hangs
  cannot hang the parent, and one that dies says so with the tail of its log.
* A fresh write token in a 0600 token file (or the given file, created the same way if it is
  missing): a local server is never open to other local users.
* The child runs in its own session (``start_new_session``): Ctrl-C or a batch scheduler's
  signal to the parent's process group does not reach it, so the parent decides when it stops
  (e.g. after writing its own checkpoint). On Linux it also gets SIGTERM if the thread that
  started it dies (``PR_SET_PDEATHSIG``), so a parent killed outright leaves no orphan.
* stderr (the server's log) goes to a file that is kept; stdout after the port line too.
* `stop()` sends SIGTERM (a graceful shutdown with a final checkpoint), waits, and kills only
  after `stop_timeout_s`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from sd2ail_reward.client import RewardClient
from sd2ail_reward.serve_cli import PORT_LINE

__all__ = ["LocalServer", "ServerStartError", "spawn_server"]

logger = logging.getLogger(__name__)

_PORT_PREFIX = PORT_LINE + "="
_OWN_FLAGS = ("--host", "--port", "--token-file")
"""Flags LocalServer sets itself (pass host=, port=, token_file= instead)."""
_LOG_TAIL_LINES = 30

# Runs in the child before the server: ask the kernel for SIGTERM when the parent thread dies
# (PR_SET_PDEATHSIG = 1; kept across execv), give up if the parent is already gone, then become
# the server. A separate tiny interpreter instead of preexec_fn, which is unsafe with threads.
_TRAMPOLINE = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""


class ServerStartError(RuntimeError):
    """The server exited, or did not announce its port or become ready in time."""


def _write_token_file(path: Path) -> None:
    """`write <fresh token>`, created 0600 (never readable by others, not even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"write {secrets.token_urlsafe(32)}\n")


def _token_of(path: Path) -> str:
    """The file's first write token, else its first read token (validated as the server will)."""
    from sd2ail_reward.server.auth import load_tokens

    tokens = load_tokens(path)
    for role in ("write", "read"):
        for token, found in tokens.items():
            if found == role:
                return token
    raise AssertionError("load_tokens returns at least one token")


class LocalServer:
    """`python -m sd2ail_reward.cli serve <serve_args>` as a child process; see the module doc.

    Args:
        serve_args: flags for `serve` (``--demos ...`` and the rest), without --host, --port
            and --token-file, which come from `host`, `port` and `token_file`.
        token_file: the token file to serve with (created with a fresh write token if missing);
            None: a fresh one in a private temporary directory, removed at `stop()`.
        log_path: where the server's stderr (its log) goes, appended; None: a temporary file,
            kept (and named in a warning) only if the server did not exit cleanly.
        auth: False serves without a token file (loopback only; `token` is then None).
        host, port: bind address; `address` connects to 127.0.0.1 for a wildcard host.
        cli_args: flags before ``serve`` (e.g. ``["--log-level", "WARNING"]``).
        wait_ready: block until health says SERVING (False: return once the port is known).
        start_timeout_s, ready_timeout_s, stop_timeout_s: deadlines for the port line, for
            SERVING, and for the exit after SIGTERM (then SIGKILL).
        stop_with_parent: on Linux, the child gets SIGTERM if the thread that started it dies.
    """

    def __init__(
        self,
        serve_args: Sequence[str] = (),
        token_file: str | os.PathLike[str] | None = None,
        log_path: str | os.PathLike[str] | None = None,
        *,
        auth: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        cli_args: Sequence[str] = (),
        wait_ready: bool = True,
        start_timeout_s: float = 120.0,
        ready_timeout_s: float = 300.0,
        stop_timeout_s: float = 60.0,
        stop_with_parent: bool = True,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        given = [a for a in serve_args if a.split("=", 1)[0] in _OWN_FLAGS]
        if given:
            raise ValueError(f"LocalServer sets {given} itself: pass host=, port=, token_file=")
        self.stop_timeout_s = stop_timeout_s
        self.returncode: int | None = None
        self._tmp: Path | None = None
        self.token_file: Path | None = None
        self.token: str | None = None
        if auth:
            self.token_file = Path(token_file) if token_file else self._tmpdir() / "tokens"
            if not self.token_file.exists():
                _write_token_file(self.token_file)
            self.token = _token_of(self.token_file)
        self.log_path = Path(log_path) if log_path else self._tmpdir() / "server.log"
        self._log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "sd2ail_reward.cli", *cli_args, "serve", *serve_args]
        cmd += ["--host", host, "--port", str(port)]
        if self.token_file is not None:
            cmd += ["--token-file", str(self.token_file)]
        if stop_with_parent and sys.platform.startswith("linux"):
            cmd = [sys.executable, "-c", _TRAMPOLINE, str(os.getpid()), *cmd[1:]]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=cwd,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        self.pid = self.proc.pid
        self._drain: threading.Thread | None = None
        try:
            self.port = self._read_port(time.monotonic() + start_timeout_s)
            connect = "127.0.0.1" if host in ("0.0.0.0", "::", "[::]", "") else host
            self.address = f"{connect}:{self.port}"
            if wait_ready:
                self.wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise

    def _tmpdir(self) -> Path:
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="sd2ail-server-"))
        return self._tmp

    # ------------------------------------------------------------------ starting

    def _died(self, what: str) -> ServerStartError:
        code = self.proc.poll()
        state = f"exited with status {code}" if code is not None else "is still running"
        return ServerStartError(
            f"reward server {what} ({state}); its log, {self.log_path}, ends with:\n"
            + self.log_tail()
        )

    def _read_port(self, deadline: float) -> int:
        """Read stdout up to the port line, with a deadline on every read."""
        stdout = self.proc.stdout
        assert stdout is not None
        buffered = b""
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._died("did not announce its port in time")
                if not selector.select(min(remaining, 1.0)):
                    continue
                chunk = os.read(stdout.fileno(), 65536)
                if not chunk:  # EOF: the child is gone
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.proc.wait(5.0)
                    raise self._died("exited before announcing its port")
                buffered += chunk
                *lines, buffered = buffered.split(b"\n")
                for i, line in enumerate(lines):
                    text = line.decode(errors="replace").strip()
                    if text.startswith(_PORT_PREFIX):
                        self._copy_stdout(b"\n".join([*lines[i + 1 :], buffered]))
                        return int(text[len(_PORT_PREFIX) :])
                    self._log.write(line + b"\n")

    def _copy_stdout(self, pending: bytes) -> None:
        """Keep the rest of stdout in the log (a full pipe would block the server)."""
        stdout = self.proc.stdout
        assert stdout is not None

        def copy() -> None:
            with contextlib.suppress(OSError, ValueError):
                self._log.write(pending)
                while chunk := os.read(stdout.fileno(), 65536):
                    self._log.write(chunk)

        self._drain = threading.Thread(target=copy, name="sd2ail-server-stdout", daemon=True)
        self._drain.start()

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Block until health says SERVING; ServerStartError if it exits or times out."""
        deadline = time.monotonic() + timeout_s
        with RewardClient(self.address, timeout_s=5.0, max_retries=0) as client:
            while self.proc.poll() is None:
                if client.health() == "SERVING":
                    return
                if time.monotonic() > deadline:
                    raise self._died(f"was not SERVING after {timeout_s:g} s")
                time.sleep(0.05)
        raise self._died("exited while loading")

    # ------------------------------------------------------------------ using

    def client(self, **kwargs: Any) -> RewardClient:
        """A `RewardClient` for this server, with its token (unless `token=` is given)."""
        return RewardClient(self.address, **{"token": self.token, **kwargs})

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last lines of the server's log."""
        with contextlib.suppress(ValueError):
            self._log.flush()
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def signal(self, sig: int) -> None:
        """Send `sig` to the server (only to it: it leads its own process group)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout_s: float | None = None) -> int:
        """Wait for the server to exit; its exit status (TimeoutExpired after `timeout_s`)."""
        code = self.proc.wait(timeout_s)
        self._finish(code)
        return code

    # ------------------------------------------------------------------ stopping

    def stop(self, timeout_s: float | None = None) -> int:
        """SIGTERM, wait up to `timeout_s` (default `stop_timeout_s`), then SIGKILL; returns the
        exit status (0 after a graceful shutdown). Idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout_s if timeout_s is None else timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("reward server %d ignored SIGTERM; killing it", self.pid)
                self.proc.kill()
        return self.wait()

    def kill(self) -> int:
        """SIGKILL (no final checkpoint: for crash tests)."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self.wait()

    def _finish(self, code: int) -> None:
        if self.returncode is not None:
            return
        self.returncode = code
        if self._drain is not None:
            self._drain.join(5.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        if self._tmp is None:
            return
        if self.token_file is not None and self.token_file.parent == self._tmp:
            self.token_file.unlink(missing_ok=True)
        if code == 0 or self.log_path.parent != self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
        else:
            logger.warning("reward server exited with status %d; its log: %s", code, self.log_path)

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = getattr(self, "address", "starting")
        return f"LocalServer({where}, pid {self.pid}, log {self.log_path})"


def spawn_server(
    serve_args: Sequence[str] = (),
    token_file: str | os.PathLike[str] | None = None,
    log_path: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> LocalServer:
    """Start a local server (see `LocalServer`); use it as a context manager to stop it."""
    return LocalServer(serve_args, token_file, log_path, **kwargs)
