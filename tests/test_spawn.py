"""sd2ail_reward.spawn: the one way to start a local `sd2ail-reward serve` and stop it.

Servers are tiny (SMALL_FLAGS) and bound to 127.0.0.1. Signals are sent to a helper parent
process in its own session, never to the test process's group.
"""

from __future__ import annotations

import os
import selectors
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest_server import REPO, SMALL_FLAGS

from sd2ail_reward.spawn import LocalServer, ServerStartError, spawn_server


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's zombie waits for its reaper)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] != "Z"


def _readline(proc: subprocess.Popen[str], timeout_s: float) -> str:
    """One line of `proc`'s stdout, waiting at most `timeout_s`."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout_s):
            proc.kill()
            raise AssertionError(f"no output from the parent in {timeout_s} s")
    return proc.stdout.readline()


def test_spawned_server_leads_its_own_group_and_stops_on_sigterm(
    demo_store: Path, tmp_path: Path
) -> None:
    log = tmp_path / "server.log"
    with spawn_server(["--demos", str(demo_store), *SMALL_FLAGS], log_path=log) as server:
        assert server.address == f"127.0.0.1:{server.port}"
        assert os.getpgid(server.pid) == server.pid != os.getpgid(0)
        assert os.getsid(server.pid) != os.getsid(0)
        assert server.token_file is not None and server.token is not None
        assert stat.S_IMODE(server.token_file.stat().st_mode) == 0o600
        with server.client() as client:
            assert client.health() == "SERVING"  # wait_ready=True: back only once SERVING
            assert client.info().env_id == "Pendulum-v1"
        token_file = server.token_file
    assert server.returncode == 0
    assert "signal 15: shutting down gracefully" in log.read_text()
    assert not token_file.exists()  # the generated token leaves with the server
    assert log.exists()  # the log stays


def test_given_token_file_is_created_private_and_reused(demo_store: Path, tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    flags = ["--demos", str(demo_store), *SMALL_FLAGS]
    with LocalServer(flags, token_file, tmp_path / "a.log", wait_ready=False) as first:
        token = first.token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text().split() == ["write", token]
    with LocalServer(flags, token_file, tmp_path / "b.log") as second:
        assert second.token == token
        with second.client(max_retries=0) as client:
            assert client.stats()["serving"]["uptime_s"] > 0  # the token works
    assert token_file.exists()  # a given file is the caller's: kept


def test_a_server_that_dies_at_start_names_its_log(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    t0 = time.monotonic()
    with pytest.raises(ServerStartError) as err:
        LocalServer(["--demos", str(tmp_path / "missing.zarr"), *SMALL_FLAGS], log_path=log)
    message = str(err.value)
    assert "exited before announcing its port" in message and "status 2" in message
    assert str(log) in message and "demo store not found" in message
    assert time.monotonic() - t0 < 60


def test_flags_the_spawner_owns_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="port="):
        LocalServer(["--demos", "x", "--port", "50051"], log_path=tmp_path / "log")
    with pytest.raises(ValueError, match="token_file="):
        LocalServer(["--token-file=t"], log_path=tmp_path / "log")


_PARENT = """
import os, signal, sys, time
from sd2ail_reward.spawn import LocalServer
# Python leaves SIGINT ignored when it starts with it ignored (a background job of a
# non-interactive shell, as CI may run us): this parent must take Ctrl-C like a terminal's.
signal.signal(signal.SIGINT, signal.default_int_handler)
flags = sys.argv[1:]
with LocalServer(flags, log_path=os.environ["SERVER_LOG"]) as server:
    try:  # announced inside the try: a signal sent as soon as the line is read is caught
        print("SERVER_PID", server.pid, flush=True)
        while True:
            time.sleep(0.1)
    except KeyboardInterrupt:  # the signal reached this process; did it reach the server?
        print("AFTER_SIGINT", server.client(max_retries=0).health(), flush=True)
print("SERVER_EXIT", server.returncode, flush=True)
"""


def _start_parent(demo_store: Path, log: Path) -> tuple[subprocess.Popen[str], int]:
    """A parent process (own session) running a LocalServer; returns it and the server pid."""
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_PARENT), "--demos", str(demo_store), *SMALL_FLAGS],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "SERVER_LOG": str(log)},
        start_new_session=True,
    )
    line = _readline(parent, 180.0)
    assert line.startswith("SERVER_PID"), line
    return parent, int(line.split()[1])


def test_a_signal_to_the_parents_group_does_not_reach_the_server(
    demo_store: Path, tmp_path: Path
) -> None:
    """Ctrl-C (SIGINT to the whole foreground group) reaches the parent only: the server is
    still SERVING when the parent handles it, then stops when the parent says so."""
    parent, server_pid = _start_parent(demo_store, tmp_path / "server.log")
    try:
        os.killpg(parent.pid, signal.SIGINT)
        out, _ = parent.communicate(timeout=120)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert "AFTER_SIGINT SERVING" in out, out
    assert "SERVER_EXIT 0" in out, out
    assert not _alive(server_pid)


def test_a_parent_killed_outright_leaves_no_orphan(demo_store: Path, tmp_path: Path) -> None:
    """SIGKILL to the parent: the kernel sends the server SIGTERM (PR_SET_PDEATHSIG), and it
    shuts down gracefully on its own."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    log = tmp_path / "server.log"
    parent, server_pid = _start_parent(demo_store, log)
    parent.kill()
    parent.wait(30)
    deadline = time.monotonic() + 60
    while _alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(server_pid), "the server outlived its parent"
    assert "signal 15: shutting down gracefully" in log.read_text()
