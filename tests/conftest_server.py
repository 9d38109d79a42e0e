"""Fixtures for the server and client tests: a small demo store, tiny learners, in-process
servers on 127.0.0.1:0, and `sd2ail-reward serve` subprocesses.

Loaded from tests/conftest.py via ``pytest_plugins``. Everything stays on loopback and uses a
tiny model (the CI machine has 2 cores).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from factories import OBS_DIM, make_demos

from sd2ail_reward.demos import Episode, read_demos, write_episodes
from sd2ail_reward.spawn import LocalServer

REPO = Path(__file__).resolve().parents[1]

SMALL_FLAGS = (
    "--hidden-dim",
    "32",
    "--expert-batch",
    "32",
    "--agent-batch",
    "32",
    "--min-agent-size",
    "32",
    "--candidates-per-update",
    "16",
    "--refresh-every",
    "10",
    "--diffusion-steps",
    "5",
    "--torch-threads",
    "1",
    "--log-every",
    "0",
    "--workers",
    "16",
)
"""CLI flags that shrink the learner to CI size (the same values `small_config_for` uses)."""


def write_demo_store(path: Path, n_episodes: int = 2, steps: int = 200, seed: int = 0) -> Path:
    """A Pendulum-shaped zarr demo store from the synthetic expert of tests/factories.py."""
    demos = make_demos(n_episodes, steps, seed)
    episodes = [
        Episode(
            obs=demos.obs[s],
            action=demos.action[s],
            next_obs=demos.next_obs[s],
            reward=demos.reward[s],
            terminated=demos.terminated[s],
            truncated=demos.truncated[s],
            reset_seed=i,
        )
        for i, s in enumerate(demos.episode_slices())
    ]
    write_episodes(
        path,
        episodes,
        env_id="Pendulum-v1",
        attrs={"action_low": [-2.0], "action_high": [2.0]},
        overwrite=True,
    )
    return path


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_store(tmp_path_factory.mktemp("demos") / "Pendulum-v1.zarr")


def small_config_for(store: Path, *extra: str) -> Any:
    """The LearnerConfig `serve --demos store SMALL_FLAGS extra` builds (same code path)."""
    from sd2ail_reward.serve_cli import learner_config, parse_serve_args

    args = parse_serve_args(["--demos", str(store), *SMALL_FLAGS, *extra])
    return learner_config(args.learner, "Pendulum-v1")


def small_learner(store: Path, *extra: str, seed: int = 0) -> Any:
    """A RewardLearner identical to what `serve` builds from the same store and flags."""
    from sd2ail_reward.learner import RewardLearner

    return RewardLearner(small_config_for(store, *extra), read_demos(store), seed=seed)


def probe_batch(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Env-space transitions: obs ~ N(0, 1), actions uniform in the Pendulum bounds."""
    rng = np.random.default_rng(seed)
    obs = rng.normal(0.0, 1.0, (n, OBS_DIM)).astype(np.float32)
    act = rng.uniform(-2.0, 2.0, (n, 1)).astype(np.float32)
    next_obs = (obs + 0.1 * rng.normal(size=obs.shape)).astype(np.float32)
    return obs, act, next_obs


# ------------------------------------------------------------------------------ in-process


def start_inprocess(learner: Any, **options: Any) -> Any:
    """build_server on 127.0.0.1:0 around `learner`, waited until SERVING."""
    from sd2ail_reward.server import ServeOptions, build_server

    defaults: dict[str, Any] = {"port": 0, "log_every_s": 0.0, "workers": 32, "grace_s": 1.0}
    server, _ = build_server(learner, ServeOptions(**{**defaults, **options}))
    assert server.wait_ready(60), server.load_error
    return server


# ------------------------------------------------------------------------------ subprocesses


class ServerProcess(LocalServer):
    """`sd2ail-reward serve` on 127.0.0.1 (port 0) through the library's `LocalServer`; for
    tests: no token unless `token_file` is given, and back as soon as the port is known."""

    def __init__(self, args: list[str], log: Path, token_file: Path | None = None) -> None:
        super().__init__(
            args, token_file, log, auth=token_file is not None, wait_ready=False, cwd=REPO
        )

    def log_text(self) -> str:
        return self.log_tail(lines=1_000_000)

    def terminate(self, timeout_s: float = 60.0) -> int:
        return self.stop(timeout_s)


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[Any]:
    """Factory: start(args...) -> ServerProcess; every process is killed at teardown."""
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        log = tmp_path / f"server-{len(started)}.log"
        proc = ServerProcess(list(args), log)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


def wait_serving(client: Any, timeout_s: float = 60.0) -> list[str]:
    """Poll health until SERVING; returns the statuses seen on the way."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.health()
        if not seen or seen[-1] != status:
            seen.append(status)
        if status == "SERVING":
            return seen
        time.sleep(0.01)
    raise AssertionError(f"not SERVING after {timeout_s} s; saw {seen}")
