"""Env workers on Ray (agents/ray_workers.py; needs the ray extra): a local Ray cluster
(``ray.init(num_cpus=2)``) with 2 workers, each wrapping Pendulum with SD2AILRewardWrapper
against one in-process reward server.

The server's learner never trains here (min-agent-size above what is pushed), so its reward is
one fixed function: the rewards the workers were served must equal direct client calls on the
same transitions, and the learner's agent buffer must hold every worker's transitions exactly
once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest_server import small_learner, start_inprocess

ray = pytest.importorskip("ray", reason="ray extra not installed (pip install -e '.[ray]')")

from agents.ray_workers import WrappedEnvFactory, collect_rate, ray_vector_env  # noqa: E402
from sd2ail_reward.client import RewardClient  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    # Started before this module opens any gRPC channel (Ray forks its daemons). Ray waits 30 s
    # for its GCS server to publish its port; on two cores busy with training runs that start
    # took longer (CI, 2026-12-01), so the wait is 120 s unless the caller set it.
    wait_key = "RAY_gcs_server_port_wait_time_s"
    caller_wait = os.environ.get(wait_key)
    os.environ[wait_key] = caller_wait or "120"
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        if caller_wait is None:
            del os.environ[wait_key]
    yield
    ray.shutdown()


@pytest.fixture
def frozen_server(local_ray: None, demo_store: Path) -> Iterator[tuple[Any, Any]]:
    """(server, learner): the CI-size learner, which never reaches min_agent_size."""
    learner = small_learner(demo_store, "--min-agent-size", "1000000")
    server = start_inprocess(learner)
    yield server, learner
    server.stop(grace_s=1.0)


def sorted_rows(x: np.ndarray) -> np.ndarray:
    return x[np.lexsort(x.T[::-1])]


def test_every_worker_transition_reaches_the_server_exactly_once(
    frozen_server: tuple[Any, Any],
) -> None:
    server, learner = frozen_server
    address = f"127.0.0.1:{server.port}"
    factory = WrappedEnvFactory(
        "Pendulum-v1", address, env_kwargs={"max_episode_steps": 50}, push_batch=16
    )
    venv = ray_vector_env(factory, 2)
    try:
        counters = venv.worker_counters()
        pids = {c["pid"] for c in counters}
        assert len(pids) == 2 and os.getpid() not in pids  # two actors, not this process

        venv.seed([11, 12])
        obs, _ = venv.reset()
        rng = np.random.default_rng(0)
        rows: list[list[tuple[np.ndarray, ...]]] = [[], []]
        served: list[list[float]] = [[], []]
        for t in range(70):  # past 50-step episodes: one reset per worker
            ids = np.array([0, 1]) if t % 5 else np.array([0])  # worker 1 skips every 5th
            act = rng.uniform(-2.0, 2.0, (len(ids), 1)).astype(np.float32)
            nxt, rew, term, trunc, info = venv.step(act, ids)
            for j, i in enumerate(ids):
                rows[i].append((obs[i].copy(), act[j], nxt[j].copy()))
                served[i].append(float(rew[j]))
                assert info[j]["sd2ail_reward"] == pytest.approx(rew[j])
                assert "env_reward" in info[j]
                obs[i] = nxt[j]
            done = ids[np.logical_or(term, trunc)]
            if len(done):
                obs[done], _ = venv.reset(done)
        venv.flush()
        counters = venv.worker_counters()
    finally:
        venv.close()

    n = [len(r) for r in rows]
    assert n == [70, 56]
    assert [c["steps"] for c in counters] == n  # each worker stepped what it was sent ...
    assert [c["pushed"] for c in counters] == n  # ... and pushed all of it

    with RewardClient(address) as client:
        assert client.sync(timeout_s=60)["total_pushed"] == sum(n)
        serving = client.stats()["serving"]
        assert serving["push_rows"] == sum(n) and serving.get("duplicate_pushes", 0) == 0
        obs_all, act_all, next_all = (np.stack(c) for c in zip(*rows[0], *rows[1], strict=True))
        direct = client.reward(obs_all, act_all, next_all)
    # served rewards == direct client calls on the same inputs (the model never changed); to
    # float32 rounding, not bitwise: one row per call vs one batch (max diff seen 2.4e-7)
    np.testing.assert_allclose(np.concatenate(served), direct, rtol=1e-6, atol=1e-6)

    # the learner's agent buffer holds exactly these transitions, each once
    stats = learner.stats()
    assert stats["agent/total_pushed"] == stats["buffer/agent"] == sum(n)
    expected = learner.snapshot().rows(obs_all, act_all, next_all)
    np.testing.assert_array_equal(sorted_rows(learner.agent.latest(sum(n))), sorted_rows(expected))


def test_collector_over_ray_workers_pushes_what_it_collects(
    frozen_server: tuple[Any, Any],
) -> None:
    """The training loop's side: a Tianshou Collector over the Ray workers, unchanged."""
    server, learner = frozen_server
    factory = WrappedEnvFactory("Pendulum-v1", f"127.0.0.1:{server.port}", push_batch=16)
    venv = ray_vector_env(factory, 2)
    try:
        assert collect_rate(venv, 60) > 0
        venv.flush()
        steps = [c["steps"] for c in venv.worker_counters()]
    finally:
        venv.close()
    assert sum(steps) == 60 and min(steps) > 0
    with RewardClient(f"127.0.0.1:{server.port}") as client:
        assert client.sync(timeout_s=60)["total_pushed"] == 60
    assert learner.stats()["agent/total_pushed"] == 60
