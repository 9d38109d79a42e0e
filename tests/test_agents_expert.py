"""`sd2ail-reward demos record`: a store of whole episodes, or an exit status that says why not."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.actors import actor_spec, save_actor
from agents.expert import RecordArgs, record
from agents.networks import make_actor
from agents.recipes import TrainArgs
from sd2ail_reward.demos import read_demos


def untrained_expert_run(run_dir: Path, env_id: str) -> Path:
    """The files `record` reads from a training run, with an untrained actor."""
    env = gym.make(env_id)
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    assert isinstance(obs_space, gym.spaces.Box) and isinstance(act_space, gym.spaces.Box)
    torch.manual_seed(0)
    actor = make_actor(obs_space.shape, act_space.shape, [16, 16])
    spec = actor_spec(TrainArgs(env=env_id, hidden_sizes=(16, 16)), obs_space, act_space)
    run_dir.mkdir()
    (run_dir / "actor_spec.json").write_text(json.dumps(spec))
    (run_dir / "config.json").write_text(json.dumps({"seed": 0}))
    info = {"env_step": 1000, "eval_return_mean": 0.0, "eval_return_std": 0.0}
    save_actor(run_dir, "best_actor", actor, info)
    return run_dir


def terminated_episodes(store: Path) -> list[int]:
    demos = read_demos(store)
    return [i for i, rows in enumerate(demos.episode_slices()) if demos.terminated[rows].any()]


def test_an_expert_that_falls_is_refused_under_max_fallen_0(tmp_path: Path) -> None:
    # an untrained Hopper falls within a few dozen steps: every episode terminates
    run_dir = untrained_expert_run(tmp_path / "hopper", "Hopper-v5")
    store = tmp_path / "hopper.zarr"
    args = RecordArgs(run_dir=str(run_dir), out=str(store), episodes=3)
    returns = record(args)  # without --max-fallen it records what it gets
    assert len(returns) == 3
    assert terminated_episodes(store) == [0, 1, 2]
    refused = tmp_path / "refused.zarr"
    with pytest.raises(SystemExit) as exit_info:
        record(RecordArgs(run_dir=str(run_dir), out=str(refused), episodes=3, max_fallen=0))
    assert exit_info.value.code == 1
    assert not refused.exists()


def test_whole_episodes_pass_max_fallen_0(tmp_path: Path) -> None:
    # Pendulum never terminates: every episode runs to its 200-step time limit
    run_dir = untrained_expert_run(tmp_path / "pendulum", "Pendulum-v1")
    store = tmp_path / "pendulum.zarr"
    returns = record(RecordArgs(run_dir=str(run_dir), out=str(store), episodes=2, max_fallen=0))
    demos = read_demos(store)
    assert terminated_episodes(store) == []
    assert demos.n_episodes == 2 and list(np.diff(demos.episode_ends, prepend=0)) == [200, 200]
    assert len(returns) == 2
    # --min-return still applies beside it: whole episodes under the bar fail
    with pytest.raises(SystemExit):
        record(
            RecordArgs(
                run_dir=str(run_dir), out=str(store), episodes=2, max_fallen=0,
                min_return=float(returns.mean()) + 1.0,
            )
        )  # fmt: skip


def test_max_fallen_refuses_an_expert_that_keeps_falling(tmp_path: Path) -> None:
    run_dir = untrained_expert_run(tmp_path / "hopper", "Hopper-v5")
    store = tmp_path / "hopper.zarr"
    with pytest.raises(SystemExit) as exit_info:
        record(RecordArgs(run_dir=str(run_dir), out=str(store), episodes=2, max_fallen=3))
    assert exit_info.value.code == 1
    assert not store.exists()  # 4 falls in 4 tries: nothing written


def test_max_fallen_writes_the_unfiltered_mean_beside_the_stored_one(tmp_path: Path) -> None:
    run_dir = untrained_expert_run(tmp_path / "pendulum", "Pendulum-v1")
    store = tmp_path / "pendulum.zarr"
    returns = record(RecordArgs(run_dir=str(run_dir), out=str(store), episodes=2, max_fallen=1))
    expert = json.loads((tmp_path / "Pendulum-v1.expert.json").read_text())
    assert expert["discarded_fallen_episodes"] == []  # Pendulum never terminates
    assert expert["attempted_return_mean"] == pytest.approx(float(returns.mean()))
    assert read_demos(store).attrs["max_fallen"] == 1
