"""The main job end to end: `sd2ail-reward train` through a real server subprocess, the
wrapper and Tianshou SAC, then `--resume` of the same run; and the committed demo stores."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PENDULUM = REPO / "demos" / "Pendulum-v1.zarr"
HOPPER = REPO / "demos" / "Hopper-v5.zarr"

TINY = [
    "--env", "Pendulum-v1", "--demos", str(PENDULUM), "--demo-episodes", "6",
    "--start-steps", "300", "--chunk", "100", "--eval-every", "300", "--eval-episodes", "2",
    "--hidden-sizes", "32", "32", "--batch-size", "64", "--no-progress",
    "--server-arg=--hidden-dim=32", "--server-arg=--expert-batch=64",
    "--server-arg=--agent-batch=64", "--server-arg=--min-agent-size=64",
    "--server-arg=--candidates-per-update=16",
]  # fmt: skip


def run_train(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "sd2ail_reward.cli", "train", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def latest_sac_checkpoint(run_dir: Path) -> Any:
    from sd2ail_reward.checkpoint import CheckpointStore

    return CheckpointStore(run_dir / "checkpoints").load_latest()


def buffer_obs(run_dir: Path) -> np.ndarray:
    return np.asarray(latest_sac_checkpoint(run_dir).state["buffer"]["data/obs"])


def tensorboard_scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import (  # type: ignore[import-untyped]
        EventAccumulator,
    )

    scalars: dict[str, list[tuple[int, float]]] = {}
    for events in sorted(tb_dir.glob("events*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return scalars


@pytest.mark.slow
def test_train_then_resume_continues_the_same_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # with TD3+BC's cloning term, so the whole run path carries it (and resumes it)
    run_train(*TINY, "--steps", "600", "--bc-weight", "0.1", "--run-dir", str(run_dir))
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["env_step"]) for r in rows] == [300, 600]
    for row in rows:
        assert np.isfinite(float(row["eval_return_mean"]))
        assert 0 < float(row["d_expert"]) < 1 and 0 < float(row["d_agent"]) < 1
    assert float(rows[-1]["disc_updates"]) > 0
    assert all(r["eval_x_travelled"] == "nan" for r in rows)  # Pendulum has no x_position
    assert (run_dir / "learning_curve.png").stat().st_size > 0
    assert any((run_dir / "tb").iterdir())
    scalars = tensorboard_scalars(run_dir / "tb")
    # logged at every evaluation once SAC has updated (the first one falls in the warm-up)
    assert [step for step, _ in scalars["sac/alpha"]] == [600]
    assert all(0 < alpha < 10 for _, alpha in scalars["sac/alpha"])
    assert all(np.isfinite(loss) for _, loss in scalars["sac/critic1_loss"])
    assert [step for step, _ in scalars["sac/cloning_mse"]] == [600]
    assert all(0 <= mse < 4 for _, mse in scalars["sac/cloning_mse"])  # actions in [-1, 1]^A
    config = json.loads((run_dir / "config.json").read_text())
    assert config["normalize_obs"] is False and config["sac_recipe"] == "reference"  # resolved
    assert config["bc_weight"] == 0.1
    obs_before = buffer_obs(run_dir)
    # the same command again (no --resume) refuses, and leaves the run as it was
    metrics_before = (run_dir / "metrics.csv").read_text()
    again = subprocess.run(
        [sys.executable, "-m", "sd2ail_reward.cli", "train", *TINY, "--run-dir", str(run_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 2 and "already holds a run" in again.stderr, again.stderr[-2000:]
    assert "--resume" in again.stderr
    assert (run_dir / "metrics.csv").read_text() == metrics_before
    # the server checkpoint written with SAC's is the one a resume loads, even when the
    # server's LATEST says otherwise (here: an older generation, as a stale pointer would be)
    paired_gen = latest_sac_checkpoint(run_dir).meta["server_generation"]
    server_gens = sorted(p.name for p in (run_dir / "server").glob("gen-*"))
    assert paired_gen in server_gens and server_gens[0] != paired_gen
    (run_dir / "server" / "LATEST").write_text(server_gens[0] + "\n")

    out = run_train("--run-dir", str(run_dir), "--resume", "--steps", "900", "--no-progress")
    assert "resumed from" in out and "at env step 600" in out
    assert f"--resume-from {paired_gen}" in out
    assert (
        f"resuming from checkpoint {run_dir / 'server' / paired_gen} "
        in (run_dir / "server.log").read_text()
    )
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["env_step"]) for r in rows] == [300, 600, 900]
    obs_after = buffer_obs(run_dir)
    # the replay buffer carried over: the first 600 transitions are the same ones
    np.testing.assert_array_equal(obs_after[:600], obs_before[:600])
    assert np.abs(obs_after[600:900]).sum() > 0

    plots = tmp_path / "plots"
    proc = subprocess.run(
        [sys.executable, "-m", "sd2ail_reward.cli", "plot", str(run_dir), "--out", str(plots)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (plots / "curves.png").stat().st_size > 0 and (plots / "pca.png").stat().st_size > 0
    quality = json.loads((plots / "quality.json").read_text())
    assert quality["agent_latest_rows"] > 0 and quality["frechet_agent_latest"] >= 0
    assert quality["transitions"] == 900  # SAC's replay buffer, scored by the final D
    assert -1 <= quality["reward_corr_latest"] <= 1 and -1 <= quality["reward_corr_whole_run"] <= 1
    assert quality["episodes"] == 900 // 200  # Pendulum's episodes end at their time limit
    assert -1 <= quality["reward_corr_episode_returns"] <= 1
    assert -1 <= quality["reward_corr_episode_means"] <= 1


@pytest.mark.parametrize("store", [PENDULUM, HOPPER], ids=["Pendulum-v1", "Hopper-v5"])
def test_committed_demos_verify(store: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sd2ail_reward.cli", "demos", "verify", str(store)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "40 episodes replayed" in proc.stdout and "OK" in proc.stdout


def test_committed_pendulum_expert_meets_the_bar() -> None:
    from sd2ail_reward.demos import read_demos

    demos = read_demos(PENDULUM)
    assert demos.n_episodes == 40
    assert (np.diff(np.concatenate([[0], demos.episode_ends])) == 200).all()
    assert demos.episode_returns.mean() >= -200


def test_committed_hopper_expert_meets_the_bar() -> None:
    from sd2ail_reward.demos import read_demos

    demos = read_demos(HOPPER)
    assert demos.n_episodes == 40
    assert (np.diff(np.concatenate([[0], demos.episode_ends])) == 1000).all()
    assert demos.episode_returns.mean() >= 3000


class _SlowServer:
    """A client stand-in whose Sync times out `misses` times; `progress` says whether the
    model version advances meanwhile."""

    def __init__(self, misses: int, progress: bool) -> None:
        self.misses, self.progress, self.version, self.calls = misses, progress, 0, 0

    def sync(self, timeout_s: float) -> dict[str, int]:
        import grpc

        from sd2ail_reward.client import RewardServiceError

        self.calls += 1
        if self.calls <= self.misses:
            self.version += 100 if self.progress else 0
            raise RewardServiceError("Sync", grpc.StatusCode.DEADLINE_EXCEEDED, "not yet")
        return {"model_version": self.version}

    def info(self) -> object:
        from types import SimpleNamespace

        return SimpleNamespace(model_version=self.version)


def test_agent_keeps_waiting_while_the_discriminator_catches_up() -> None:
    from agents.local_server import wait_for_discriminator

    slow = _SlowServer(misses=3, progress=True)
    assert wait_for_discriminator(slow, round_s=0.01) == {"model_version": 300}  # type: ignore[arg-type]
    assert slow.calls == 4
    stalled = _SlowServer(misses=5, progress=False)
    with pytest.raises(RuntimeError, match="no training progress"):
        wait_for_discriminator(stalled, round_s=0.01)  # type: ignore[arg-type]


def test_sac_entropy_target_defaults_to_the_references_and_follows_the_flag() -> None:
    import gymnasium as gym

    from agents.recipes import parse_train_args
    from agents.sac import make_sac

    def target_entropy(*flags: str) -> float:
        args = parse_train_args(flags)
        env = gym.make("Hopper-v5")
        assert isinstance(env.observation_space, gym.spaces.Box)
        assert isinstance(env.action_space, gym.spaces.Box)
        sac = make_sac(args, env.observation_space, env.action_space, None)
        return float(vars(sac.alpha)["_target_entropy"])  # AutoAlpha keeps it private

    assert target_entropy("--sac-recipe", "reference") == -1.5  # -|A|/2 (ALGORITHM.md 2.3)
    assert target_entropy("--sac-recipe", "reference", "--target-entropy", "-3") == -3.0
    assert target_entropy("--sac-recipe", "expert") == -3.0  # -|A|, as agents/expert.py
    assert target_entropy("--sac-recipe", "expert", "--target-entropy", "-2") == -2.0


def test_sac_recipe_sets_every_field_and_single_flags_override_it() -> None:
    from typing import get_args

    from agents.recipes import DEFAULT_RECIPE, SAC_RECIPES, SacRecipeName, TrainArgs
    from agents.recipes import parse_train_args as parse

    assert set(get_args(SacRecipeName)) == set(SAC_RECIPES)  # --sac-recipe's choices

    reference = parse(["--sac-recipe", "reference"])
    assert (reference.lr, reference.adam_beta1, reference.alpha) == (3e-4, 0.25, 0.2)
    assert reference.fixed_length
    expert = parse(["--sac-recipe", "expert"])
    assert (expert.lr, expert.adam_beta1, expert.alpha) == (1e-3, 0.9, 1.0)
    assert not expert.fixed_length
    mixed = parse(["--sac-recipe", "expert", "--lr", "5e-4", "--fixed-length"])
    assert (mixed.lr, mixed.adam_beta1, mixed.fixed_length) == (5e-4, 0.9, True)
    assert not parse(["--sac-recipe", "reference", "--no-fixed-length"]).fixed_length
    # the dataclass's own defaults are the default recipe's, so TrainArgs() agrees with the CLI
    default, recipe = TrainArgs(), SAC_RECIPES[DEFAULT_RECIPE]
    assert parse([]) == default
    assert (default.lr, default.adam_beta1, default.alpha) == (
        recipe.lr,
        recipe.adam_beta1,
        recipe.alpha,
    )
    assert default.fixed_length == recipe.fixed_length


def test_evaluation_measures_distance_travelled_so_standing_is_visible() -> None:
    """A policy that stands still on Hopper scores ~1000 from the healthy bonus alone; the
    evaluation's x distance tells it from one that moves (here: the committed expert)."""
    import json

    import torch

    from agents.actors import deterministic_policy_fn, policy_from_spec
    from agents.evaluation import make_eval_envs, mean_travelled
    from agents.recipes import TrainArgs

    spec = json.loads((REPO / "demos" / "Hopper-v5.expert.json").read_text())
    expert = deterministic_policy_fn(
        policy_from_spec(spec, torch.load(REPO / "demos" / "Hopper-v5.expert.pt"))
    )
    envs, trackers = make_eval_envs(TrainArgs(env="Hopper-v5", eval_episodes=2))

    def run(policy: str, steps: int) -> float:
        envs.seed([7, 8])
        obs, _ = envs.reset()
        done = np.zeros(len(trackers), dtype=bool)
        for _ in range(steps):
            ids = np.flatnonzero(~done)
            if policy == "still":
                act = np.zeros((ids.size, 3))
            else:
                act = np.stack([expert(o) for o in obs[ids]])
            step_obs, _, term, trunc, _ = envs.step(act, ids)
            obs[ids] = step_obs
            done[ids] |= term | trunc
            if done.all():
                break
        return mean_travelled(trackers)

    assert np.isnan(run("expert", 300))  # no episode finished yet: nothing to report
    for tracker in trackers:
        tracker.finished.clear()
    moved = run("expert", 1000)  # the time limit ends both episodes
    assert moved > 10.0, moved  # the expert covers ~17 m per episode
    assert all(not t.finished for t in trackers)  # read once, then forgotten
    assert abs(run("still", 1000)) < 0.1  # zero torques: slumps where it stands
    envs.close()
    pendulum, pend_trackers = make_eval_envs(TrainArgs(env="Pendulum-v1", eval_episodes=1))
    pendulum.reset()
    for _ in range(200):
        pendulum.step(np.zeros((1, 1)))
    assert np.isnan(mean_travelled(pend_trackers))
    pendulum.close()


def test_reference_recipe_normalises_sac_observations_on_hopper_only() -> None:
    from agents.recipes import parse_train_args, policy_sees_normalized_obs

    def normalised(*flags: str) -> bool:
        return policy_sees_normalized_obs(parse_train_args(flags))

    assert normalised("--sac-recipe", "reference", "--env", "Hopper-v5")  # ScaledEnv
    assert normalised("--sac-recipe", "reference", "--env", "Walker2d-v5")
    assert not normalised("--sac-recipe", "reference", "--env", "HalfCheetah-v5")
    assert not normalised("--sac-recipe", "reference", "--env", "Pendulum-v1")
    assert not normalised("--sac-recipe", "expert", "--env", "Hopper-v5")
    assert not normalised("--sac-recipe", "reference", "--env", "Hopper-v5", "--no-normalize-obs")
    assert normalised("--sac-recipe", "expert", "--env", "Pendulum-v1", "--normalize-obs")


def test_normalising_networks_equal_plain_ones_on_normalised_inputs() -> None:
    import json

    import torch

    from agents.actors import deterministic_policy_fn, policy_from_spec
    from agents.networks import InputScaledNet, make_actor, make_critic

    rng = np.random.default_rng(0)
    mean = rng.normal(size=11).astype(np.float32)
    std = rng.uniform(0.01, 3.0, size=11).astype(np.float32)
    obs = rng.normal(size=(64, 11)).astype(np.float32) * 3
    act = rng.uniform(-1, 1, size=(64, 3)).astype(np.float32)
    normalised_obs = (obs - mean) / (std + np.finfo(np.float32).eps)

    torch.manual_seed(0)
    scaled_actor = make_actor((11,), (3,), (32, 32), (mean, std))
    plain_actor = make_actor((11,), (3,), (32, 32))
    assert isinstance(scaled_actor.preprocess, InputScaledNet)
    weights = {k: v for k, v in scaled_actor.state_dict().items() if "input_" not in k}
    plain_actor.load_state_dict(weights)
    (mu_scaled, _), _ = scaled_actor(obs)
    (mu_plain, _), _ = plain_actor(normalised_obs)
    torch.testing.assert_close(mu_scaled, mu_plain, rtol=1e-5, atol=1e-5)

    scaled_critic = make_critic((11,), (3,), (32, 32), (mean, std))
    plain_critic = make_critic((11,), (3,), (32, 32))
    weights = {k: v for k, v in scaled_critic.state_dict().items() if "input_" not in k}
    plain_critic.load_state_dict(weights)
    torch.testing.assert_close(  # actions are not normalised
        scaled_critic(obs, act), plain_critic(normalised_obs, act), rtol=1e-5, atol=1e-5
    )

    # a saved actor carries its statistics: loading it back needs nothing else
    spec = json.loads((REPO / "demos" / "Hopper-v5.expert.json").read_text())
    spec = {**spec, "hidden_sizes": [32, 32]}
    policy = deterministic_policy_fn(policy_from_spec(spec, scaled_actor.state_dict()))
    expected = np.tanh(mu_scaled.detach().numpy())
    low = np.asarray(spec["action_low"], dtype=np.float32)
    high = np.asarray(spec["action_high"], dtype=np.float32)
    np.testing.assert_allclose(
        policy(obs[0]), low + (expected[0] + 1) * (high - low) / 2, atol=1e-5
    )


def test_a_resumed_run_starts_from_its_last_evaluation(tmp_path: Path) -> None:
    from agents.run_files import last_evaluation_return

    metrics = tmp_path / "metrics.csv"
    assert np.isnan(last_evaluation_return(metrics))  # no evaluation yet
    metrics.write_text("env_step,eval_return_mean\n10000,132.5\n20000,124.1\n")
    assert last_evaluation_return(metrics) == pytest.approx(124.1)


@pytest.mark.slow
def test_bc_baseline_learns_hopper_from_one_demo(tmp_path: Path) -> None:
    """`--algo bc` (no server): regressing the actor onto ONE Hopper demo already hops forward;
    calibrated at 10 epochs, seeds 0/1/2 best 1144-1510 and 6.3-7.8 m (random: 17, ~0 m)."""
    run_dir = tmp_path / "bc"
    run_train(
        "--algo", "bc", "--env", "Hopper-v5", "--demos", str(HOPPER), "--num-demos", "1",
        "--bc-epochs", "10", "--eval-episodes", "2", "--seed", "0", "--no-progress",
        "--run-dir", str(run_dir),
    )  # fmt: skip
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [int(r["env_step"]) for r in rows] == list(range(1, 11))
    best = max(rows, key=lambda r: float(r["eval_return_mean"]))
    assert float(best["eval_return_mean"]) > 500
    assert float(best["eval_x_travelled"]) > 2.0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["best_return"] == pytest.approx(float(best["eval_return_mean"]))
    assert (run_dir / "best_actor.pt").exists() and (run_dir / "learning_curve.png").exists()


def test_bc_init_moves_the_actor_onto_the_demo_actions() -> None:
    import torch

    from agents.networks import box_spaces, policy_obs_stats
    from agents.recipes import TrainArgs
    from agents.sac import initialise_actor_by_cloning, make_sac
    from sd2ail_reward.demos import read_demos

    demos = read_demos(HOPPER, num_episodes=1)
    args = TrainArgs(env="Hopper-v5", bc_init_epochs=20, normalize_obs=True)
    obs_space, act_space = box_spaces("Hopper-v5")
    torch.manual_seed(0)
    actor = make_sac(args, obs_space, act_space, None, policy_obs_stats(args, demos)).policy.actor

    def action_error() -> float:
        with torch.no_grad():
            (mu, _), _ = actor(demos.obs)
        return float(((torch.tanh(mu).numpy() - demos.action) ** 2).mean())

    before = action_error()
    initialise_actor_by_cloning(args, actor, demos, act_space)
    after = action_error()
    # seeds 0/1/2: 0.08-0.095 of the error before; the demo actions span [-1, 1]
    assert after < 0.2 * before, (before, after)


def random_transitions(
    size: int, obs_dim: int, act_bound: float, act_dim: int, rng: np.random.Generator
) -> Any:
    """A replay buffer of transitions unrelated to any env: SAC's updates on it test the
    optimiser wiring, not learning."""
    from tianshou.data import Batch, ReplayBuffer

    buffer = ReplayBuffer(size)
    for _ in range(size):
        buffer.add(Batch(
            obs=rng.normal(size=obs_dim), act=rng.uniform(-act_bound, act_bound, size=act_dim),
            rew=1.0 + rng.normal(), terminated=False, truncated=False,
            obs_next=rng.normal(size=obs_dim), info={},
        ))  # fmt: skip
    return buffer


def test_actor_hold_freezes_the_actor_while_the_critics_learn() -> None:
    import torch
    from tianshou.utils.torch_utils import policy_within_training_step

    from agents.networks import box_spaces
    from agents.recipes import TrainArgs
    from agents.sac import ActorOptimizer, make_sac

    obs_space, act_space = box_spaces("Pendulum-v1")
    torch.manual_seed(0)
    sac = make_sac(TrainArgs(env="Pendulum-v1", hidden_sizes=(16, 16)), obs_space, act_space, None)
    sac.policy_optim = ActorOptimizer(sac.policy_optim, hold=3)  # type: ignore[assignment]
    buffer = random_transitions(64, 3, 2.0, 1, np.random.default_rng(0))

    def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
        return [p.detach().clone() for p in module.parameters()]

    def changed(before: list[torch.Tensor], module: torch.nn.Module) -> bool:
        return any(not torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))

    actor, critic = snapshot(sac.policy.actor), snapshot(sac.critic)
    with policy_within_training_step(sac.policy):
        for _ in range(3):
            sac.update(buffer=buffer, sample_size=32)
        assert not changed(actor, sac.policy.actor)  # held
        assert changed(critic, sac.critic)  # the critics learned meanwhile
        sac.update(buffer=buffer, sample_size=32)
        assert changed(actor, sac.policy.actor)  # the hold is over


def test_bc_weight_pulls_sac_actor_onto_the_demo_actions() -> None:
    """SAC updates on unrelated random transitions, with and without TD3+BC's cloning term:
    only the actor with the term ends up near the demo's actions."""
    import torch
    from tianshou.utils.torch_utils import policy_within_training_step

    from agents.networks import box_spaces
    from agents.recipes import TrainArgs
    from agents.sac import make_sac, wrap_actor_optimizer
    from sd2ail_reward.demos import read_demos

    demos = read_demos(HOPPER, num_episodes=1)
    obs_space, act_space = box_spaces("Hopper-v5")
    buffer = random_transitions(512, 11, 1.0, 3, np.random.default_rng(0))

    def demo_action_error(bc_weight: float) -> float:
        args = TrainArgs(env="Hopper-v5", hidden_sizes=(64, 64), bc_weight=bc_weight)
        torch.manual_seed(0)
        sac = make_sac(args, obs_space, act_space, None)
        optim = wrap_actor_optimizer(args, sac, demos, act_space)
        with policy_within_training_step(sac.policy):
            for _ in range(300):
                sac.update(buffer=buffer, sample_size=64)
        with torch.no_grad():
            (mu, _), _ = sac.policy.actor(demos.obs)
        if bc_weight > 0:
            assert np.isfinite(optim.last_cloning_mse)
        return float(((torch.tanh(mu).numpy() - demos.action) ** 2).mean())

    without, with_cloning = demo_action_error(0.0), demo_action_error(2.0)
    # seeds 0/1/2: 0.11-0.17 of the error without the term
    assert with_cloning < 0.5 * without, (without, with_cloning)


def test_relabelling_scores_the_actions_the_env_received() -> None:
    """The buffer holds the policy's [-1, 1] actions; the server must score the env's (here
    Pendulum's [-2, 2]), as the wrapper pushes them for training."""
    import gymnasium as gym
    import torch
    from tianshou.data import Collector, ReplayBuffer
    from tianshou.env import DummyVectorEnv
    from tianshou.utils.torch_utils import policy_within_training_step

    from agents.networks import box_spaces
    from agents.recipes import TrainArgs
    from agents.sac import make_sac

    env_actions: list[np.ndarray] = []
    scored: list[np.ndarray] = []

    class RecordActions(gym.Wrapper[Any, Any, Any, Any]):
        def step(self, action: Any) -> Any:
            env_actions.append(np.asarray(action, np.float32).copy())
            return self.env.step(action)

    def reward_fn(obs: Any, act: Any, obs_next: Any) -> np.ndarray:
        scored.append(np.asarray(act, np.float32))
        return np.zeros(len(obs), np.float32)

    obs_space, act_space = box_spaces("Pendulum-v1")
    torch.manual_seed(0)
    args = TrainArgs(env="Pendulum-v1", hidden_sizes=(16, 16))
    sac = make_sac(args, obs_space, act_space, reward_fn)
    envs = DummyVectorEnv([lambda: RecordActions(gym.make("Pendulum-v1"))])
    buffer = ReplayBuffer(200)
    collector = Collector[Any](sac, envs, buffer, exploration_noise=True)
    collector.reset()
    collector.collect(n_step=100, random=True)
    collector.collect(n_step=100)
    with policy_within_training_step(sac.policy):
        for _ in range(5):
            sac.update(buffer=buffer, sample_size=64)
    received = np.concatenate(env_actions)
    assert np.abs(received).max() > 1.5  # the random warm-up spans Pendulum's [-2, 2]
    for act in np.concatenate(scored).ravel():
        assert np.isclose(received, act, atol=1e-5).any(), act


def test_prefetched_relabelling_scores_the_batches_tianshou_samples() -> None:
    """Prefetching scores the next batch ahead without changing which batches SAC samples:
    the rows scored and the rows used are the same, update for update, as without it; a batch
    drawn after new transitions arrived is scored on the spot."""
    import gymnasium as gym
    import torch
    from tianshou.data import Collector, ReplayBuffer
    from tianshou.env import DummyVectorEnv
    from tianshou.utils.torch_utils import policy_within_training_step

    from agents.networks import box_spaces
    from agents.recipes import TrainArgs
    from agents.sac import RelabelingSAC, make_sac

    def run(prefetch: bool) -> tuple[list[np.ndarray], list[np.ndarray], RelabelingSAC]:
        scored: list[np.ndarray] = []

        def reward_fn(obs: Any, act: Any, obs_next: Any) -> np.ndarray:
            scored.append(np.asarray(obs, np.float32).copy())
            return np.asarray(obs, np.float32)[:, 0] + 2 * np.asarray(act, np.float32)[:, 0]

        torch.manual_seed(0)
        args = TrainArgs(env="Pendulum-v1", hidden_sizes=(16, 16), relabel_prefetch=prefetch)
        sac = make_sac(args, *box_spaces("Pendulum-v1"), reward_fn)
        assert isinstance(sac, RelabelingSAC)
        envs = DummyVectorEnv([lambda: gym.make("Pendulum-v1")])
        envs.seed(0)
        buffer = ReplayBuffer(400, random_seed=0)
        collector = Collector[Any](sac, envs, buffer, exploration_noise=True)
        collector.reset()
        collector.collect(n_step=100, random=True)
        used: list[np.ndarray] = []
        original = sac._preprocess_batch

        def spy(batch: Any, buf: Any, indices: np.ndarray) -> Any:
            out = original(batch, buf, indices)
            used.append(np.stack([np.asarray(batch.obs)[:, 0], np.asarray(batch.rew)]))
            return out

        sac._preprocess_batch = spy  # type: ignore[method-assign]
        for _ in range(2):  # two chunks: the second's first batch misses the prefetch
            collector.collect(n_step=50, random=True)
            with policy_within_training_step(sac.policy):
                for _ in range(5):
                    sac.update(buffer=buffer, sample_size=32)
        sac.drain()
        return scored, used, sac

    _, used_plain, _ = run(prefetch=False)
    scored, used, sac = run(prefetch=True)
    assert len(used) == len(used_plain) == 10
    for with_prefetch, without in zip(used, used_plain, strict=True):
        np.testing.assert_allclose(with_prefetch, without, rtol=1e-6)  # same rows, same rewards
    assert (sac.prefetch_hits, sac.prefetch_misses) == (8, 1)
    assert len(scored) == 10 + 2  # one prefetch after each chunk's last update is never used


def test_critic_layer_norm_flag_puts_a_layer_norm_before_each_hidden_activation_of_both_critics(
    tmp_path: Path,
) -> None:
    """`--critic-layer-norm` reaches both critics (and only them): Linear -> LayerNorm ->
    activation in every hidden layer, and a SAC checkpoint carries the norms' parameters."""
    import torch
    from tianshou.data import ReplayBuffer

    from agents.checkpoints import TrainState, restore_sac_checkpoint, save_sac_checkpoint
    from agents.networks import box_spaces
    from agents.recipes import parse_train_args
    from agents.sac import make_sac
    from sd2ail_reward.checkpoint import CheckpointStore

    args = parse_train_args(
        ["--env", "Hopper-v5", "--hidden-sizes", "64", "32", "--critic-layer-norm"]
    )
    assert args.critic_layer_norm
    sac = make_sac(args, *box_spaces("Hopper-v5"), None)
    for critic in (sac.critic, sac.critic2):
        layers = [m for m in critic.modules() if not list(m.children())]
        kinds = [type(m).__name__ for m in layers]
        # Linear, LayerNorm(64), ReLU, Linear, LayerNorm(32), ReLU, Linear(32, 1)
        assert kinds == ["Linear", "LayerNorm", "ReLU", "Linear", "LayerNorm", "ReLU", "Linear"]
        assert [m.normalized_shape for m in layers if isinstance(m, torch.nn.LayerNorm)] == [
            (64,),
            (32,),
        ]
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in sac.policy.actor.modules())
    plain = make_sac(parse_train_args(["--env", "Hopper-v5"]), *box_spaces("Hopper-v5"), None)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in plain.critic.modules())

    with torch.no_grad():  # distinct values, so the round trip is visible
        for m in sac.critic.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.fill_(0.5)
    store = CheckpointStore(tmp_path / "checkpoints")
    save_sac_checkpoint(store, sac, ReplayBuffer(10), TrainState())
    restored = make_sac(args, *box_spaces("Hopper-v5"), None)
    restore_sac_checkpoint(store.load_latest(), restored, ReplayBuffer(10))
    norms = [m for m in restored.critic.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert all(torch.equal(m.weight, torch.full_like(m.weight, 0.5)) for m in norms)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_process_group_checkpoints_both_and_resumes(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """What Ctrl-C or a batch scheduler does: the signal reaches train's whole process group.
    The local server lives in its own session, so train outlives nothing it needs: it writes
    its checkpoint paired with the server's, exits 0, and a resume starts at that step."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "sd2ail_reward.cli", "train", *TINY, "--steps", "100000"]
    proc = subprocess.Popen(
        [*cmd, "--run-dir", str(run_dir)], cwd=REPO, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        metrics = run_dir / "metrics.csv"
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, "no evaluation in time"
            time.sleep(0.5)
        os.killpg(proc.pid, sig)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    checkpoint = latest_sac_checkpoint(run_dir)
    stopped_at = checkpoint.step
    assert stopped_at >= 600  # past the second evaluation, at the chunk the signal ended
    server_gens = {p.name for p in (run_dir / "server").glob("gen-*")}
    assert checkpoint.meta["server_generation"] in server_gens
    out = run_train("--run-dir", str(run_dir), "--resume", "--steps", str(stopped_at + 100))
    assert f"at env step {stopped_at}" in out
    assert f"--resume-from {checkpoint.meta['server_generation']}" in out


@pytest.mark.slow
def test_an_expert_trains_on_the_true_reward_without_demos_and_records_a_verified_store(
    tmp_path: Path,
) -> None:
    """The expert pipeline of a new task, small: the one loop on the env's reward from
    scratch (no demo store yet), then its best actor recorded into a store that replays."""
    from sd2ail_reward.demos import read_demos

    run_dir, store = tmp_path / "expert", tmp_path / "demos.zarr"
    run_train(
        "--reward", "env", "--sac-recipe", "expert", "--env", "Pendulum-v1", "--demos", "",
        "--steps", "600", "--start-steps", "300", "--chunk", "100", "--eval-every", "300",
        "--eval-episodes", "2", "--hidden-sizes", "32", "32", "--batch-size", "64",
        "--run-dir", str(run_dir), "--no-progress",
    )  # fmt: skip
    config = json.loads((run_dir / "config.json").read_text())
    assert config["reward"] == "env" and config["demos"] == "" and not config["normalize_obs"]
    assert not (run_dir / "server").exists()  # no reward server for the env's own reward
    timings = json.loads((run_dir / "timings.json").read_text())
    assert timings["sac_update_s"] > 0 and "relabel_wait_s" not in timings
    best = json.loads((run_dir / "best_actor.json").read_text())
    for cmd in (
        ["demos", "record", "--run-dir", str(run_dir), "--out", str(store), "--episodes", "2"],
        ["demos", "verify", str(store)],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "sd2ail_reward.cli", *cmd],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "2 episodes replayed" in proc.stdout and "OK" in proc.stdout
    demos = read_demos(store)
    assert demos.n_episodes == 2 and demos.attrs["expert_training_steps"] == best["env_step"]
    # without demos, anything that needs them is refused with a clear message
    refused = subprocess.run(
        [sys.executable, "-m", "sd2ail_reward.cli", "train", "--env", "Pendulum-v1",
         "--demos", "", "--run-dir", str(tmp_path / "refused")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode != 0 and "--demos is needed for --reward learned" in refused.stderr


def test_rlkit_init_starts_at_mean_zero_unit_sigma_and_q_near_zero() -> None:
    """The reference's initial weights: hidden biases 0.1, the actor's heads and the critics'
    outputs within +-1e-3 / +-3e-3, so the first policy is ~N(0, 1) and Q ~ 0, unlike
    Tianshou's defaults; the same seed gives the same weights."""
    import torch

    from agents.networks import box_spaces
    from agents.recipes import TrainArgs
    from agents.sac import make_sac

    obs_space, act_space = box_spaces("Hopper-v5")
    obs = torch.as_tensor(np.random.default_rng(0).normal(size=(256, 11)), dtype=torch.float32)

    def built(init: str, seed: int = 0) -> Any:
        args = TrainArgs(env="Hopper-v5", sac_init=init, seed=seed, normalize_obs=False)  # type: ignore[arg-type]
        torch.manual_seed(1)
        return make_sac(args, obs_space, act_space, None)

    rlkit, tianshou = built("rlkit"), built("tianshou")
    with torch.no_grad():
        (mu, sigma), _ = rlkit.policy.actor(obs)
        q = rlkit.critic(obs, torch.zeros(256, 3))
        (mu_t, sigma_t), _ = tianshou.policy.actor(obs)
    assert mu.abs().max() < 0.05 and (sigma - 1).abs().max() < 0.05
    assert q.abs().max() < 0.2
    assert mu_t.abs().max() > 0.05 or (sigma_t - 1).abs().max() > 0.05  # the default differs
    assert torch.all(rlkit.policy.actor.preprocess.model.model[0].bias == 0.1)
    again = built("rlkit")
    for a, b in zip(rlkit.policy.actor.parameters(), again.policy.actor.parameters(), strict=True):
        assert torch.equal(a, b)


def test_policy_regulariser_adds_rlkits_term_to_the_actor_loss() -> None:
    """The actor loss handed to the optimiser carries weight x (mean mu^2 + mean log sigma^2)
    of the batch the actor loss was built from, and over updates on random transitions it
    pulls mu towards 0 against the run without it."""
    import torch
    from tianshou.utils.torch_utils import policy_within_training_step

    from agents.networks import box_spaces
    from agents.recipes import TrainArgs
    from agents.sac import ActorOptimizer, PolicyRegulariser, make_sac

    obs_space, act_space = box_spaces("Pendulum-v1")
    buffer = random_transitions(256, 3, 2.0, 1, np.random.default_rng(0))

    class Recording:
        def __init__(self, inner: Any) -> None:
            self.inner, self.losses = inner, []

        def step(self, loss: torch.Tensor, **kwargs: Any) -> None:
            self.losses.append(float(loss.detach()))
            self.inner.step(loss, **kwargs)

    def run(weight: float) -> tuple[list[float], float, PolicyRegulariser]:
        torch.manual_seed(0)
        args = TrainArgs(env="Pendulum-v1", hidden_sizes=(16, 16))
        sac = make_sac(args, obs_space, act_space, None)
        regulariser = PolicyRegulariser(sac.policy.actor, weight)
        recording = Recording(sac.policy_optim)
        sac.policy_optim = ActorOptimizer(recording, regulariser=regulariser)  # type: ignore[assignment]
        with policy_within_training_step(sac.policy):
            for _ in range(200):
                sac.update(buffer=buffer, sample_size=64)
        with torch.no_grad():
            (mu, _), _ = sac.policy.actor(np.asarray(buffer.obs[:256]))
        return recording.losses, float(mu.pow(2).mean()), regulariser

    plain_losses, plain_mu2, _ = run(0.0)
    reg_losses, reg_mu2, regulariser = run(1.0)
    assert reg_losses[0] > plain_losses[0]  # the same first batch, plus a positive term
    assert reg_mu2 < 0.5 * plain_mu2, (plain_mu2, reg_mu2)
    regulariser()  # the last forward (the mu above)
    with pytest.raises(RuntimeError):
        regulariser()  # consumed: a step without a fresh actor forward is refused


def test_a_target_with_full_episodes_ignores_evaluations_in_which_the_agent_falls(
    tmp_path: Path,
) -> None:
    """An untrained Hopper falls within a few dozen steps: any return reaches a target of
    -1e9, so without the flag the run stops at its first evaluation; with it, no evaluation
    counts, the run goes to its budget and makes no best actor (an expert whose episodes fall
    must not make a demo store)."""
    common = (
        "--reward", "env", "--sac-recipe", "expert", "--env", "Hopper-v5", "--demos", "",
        "--steps", "600", "--start-steps", "300", "--chunk", "100", "--eval-every", "300",
        "--eval-episodes", "2", "--hidden-sizes", "32", "32", "--batch-size", "64",
        "--target-return", "-1e9", "--no-progress",
    )  # fmt: skip
    run_train(*common, "--run-dir", str(tmp_path / "plain"))
    plain = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert plain["env_steps"] == 300 and plain["best_actor_return"] == plain["best_return"]
    assert json.loads((tmp_path / "plain" / "best_actor.json").read_text())["eval_fallen"] == 2
    run_train(*common, "--target-full-episodes", "--run-dir", str(tmp_path / "full"))
    full = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert full["env_steps"] == 600 and np.isnan(full["best_actor_return"])
    assert not (tmp_path / "full" / "best_actor.pt").exists()
    last = json.loads((tmp_path / "full" / "actor.json").read_text())
    assert last["eval_fallen"] == 2 and max(last["eval_lengths"]) < 1000
    assert json.loads((tmp_path / "full" / "config.json").read_text())["target_full_episodes"]


def test_a_resume_may_raise_the_target_and_keeps_it(tmp_path: Path) -> None:
    """An expert whose recorded demos fell short trains on toward a target given again."""
    from dataclasses import asdict

    from agents.recipes import TrainArgs
    from agents.train import resumed_args

    started = TrainArgs(run_dir=str(tmp_path), env="Walker2d-v5", target_return=4500.0)
    (tmp_path / "config.json").write_text(json.dumps(asdict(started)))
    plain = resumed_args(TrainArgs(run_dir=str(tmp_path), resume=True, steps=2_000_000))
    assert plain.target_return == 4500.0 and plain.env == "Walker2d-v5"
    assert plain.steps == 2_000_000
    raised = TrainArgs(run_dir=str(tmp_path), resume=True, target_return=4700.0)
    assert resumed_args(raised).target_return == 4700.0
    assert not resumed_args(raised).target_full_episodes
    strict = TrainArgs(run_dir=str(tmp_path), resume=True, target_full_episodes=True)
    assert resumed_args(strict).target_full_episodes
