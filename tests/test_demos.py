"""Demo store: round trip, append safety, selection, env checks, record + replay verification."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import zarr

from sd2ail_reward.demo_replay import (
    TooManyFallsError,
    inspect_demos,
    record_episodes,
    verify_demos,
)
from sd2ail_reward.demos import DemoSet, Episode, read_demos, write_episodes

OBS, ACT = 4, 2
BOUNDS = {"action_low": [-1.0, -2.0], "action_high": [1.0, 2.0]}


def make_episode(length: int, seed: int, rng: np.random.Generator) -> Episode:
    obs = rng.normal(size=(length + 1, OBS)).astype(np.float32)
    terminated = np.zeros(length, dtype=bool)
    terminated[-1] = True
    return Episode(
        obs=obs[:-1],
        action=rng.uniform(-1, 1, size=(length, ACT)).astype(np.float32),
        next_obs=obs[1:],
        reward=rng.normal(size=length).astype(np.float32),
        terminated=terminated,
        truncated=np.zeros(length, dtype=bool),
        reset_seed=seed,
    )


def episodes(lengths: list[int], first_seed: int = 0, seed: int = 0) -> list[Episode]:
    rng = np.random.default_rng(seed)
    return [make_episode(n, first_seed + i, rng) for i, n in enumerate(lengths)]


def zarray(path: Path, key: str) -> zarr.Array:
    """Open one array of a store for direct (test-only) edits, as a crash or tampering would."""
    node = zarr.open_group(path, mode="a", use_consolidated=False)[key]
    assert isinstance(node, zarr.Array)
    return node


def assert_episodes_equal(demos: DemoSet, eps: list[Episode]) -> None:
    assert demos.n_episodes == len(eps)
    for sl, ep, seed in zip(demos.episode_slices(), eps, demos.reset_seeds, strict=True):
        for key in ("obs", "action", "next_obs", "reward", "terminated", "truncated"):
            np.testing.assert_array_equal(getattr(demos, key)[sl], getattr(ep, key))
        assert seed == ep.reset_seed


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    eps = episodes([5, 3, 7])
    write_episodes(path, eps, env_id="Toy-v0", attrs={**BOUNDS, "expert_algo": "sac"})
    demos = read_demos(path)
    assert_episodes_equal(demos, eps)
    assert demos.obs.dtype == np.float32 and demos.terminated.dtype == np.bool_
    assert demos.episode_ends.tolist() == [5, 8, 15]
    assert (demos.env_id, demos.obs_dim, demos.act_dim) == ("Toy-v0", OBS, ACT)
    np.testing.assert_array_equal(demos.action_high, [1.0, 2.0])
    expected = [float(ep.reward.astype(np.float64).sum()) for ep in eps]
    np.testing.assert_allclose(demos.episode_returns, expected)
    np.testing.assert_allclose(demos.attrs["episode_returns"], expected)
    assert demos.attrs["expert_algo"] == "sac"
    assert demos.attrs["schema_version"] == 1
    assert "gymnasium_version" in demos.attrs and "mujoco_version" in demos.attrs
    table = inspect_demos(path)
    assert "Toy-v0" in table and "expert_algo" in table and "terminated" in table
    assert len(table.splitlines()) >= 3 + 3
    write_episodes(path, eps[:1], env_id="Other-v0", attrs=BOUNDS, overwrite=True)
    assert read_demos(path, expected_env_id="Other-v0").n_episodes == 1


def test_append_after_reopen_keeps_every_row(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    first, second = episodes([3000, 2500]), episodes([5000, 1], first_seed=2, seed=1)
    write_episodes(path, first, env_id="Toy-v0", attrs=BOUNDS)
    assert read_demos(path).n_episodes == 2
    write_episodes(path, second, env_id="Toy-v0", attrs={"note": "second batch"})
    demos = read_demos(path)
    assert_episodes_equal(demos, first + second)
    assert demos.episode_ends[-1] == 10501
    assert len(demos.attrs["episode_returns"]) == 4
    assert demos.attrs["note"] == "second batch"


def test_append_to_a_consolidated_store_loses_nothing(tmp_path: Path) -> None:
    # ECOSYSTEM.md §5.2: consolidated metadata serves stale shapes and an append then drops rows.
    path = tmp_path / "d.zarr"
    first, second, third = episodes([12]), episodes([3], seed=1), episodes([2], seed=2)
    write_episodes(path, first, env_id="Toy-v0", attrs=BOUNDS)
    with pytest.warns(UserWarning):
        zarr.consolidate_metadata(path)
    write_episodes(path, second, env_id="Toy-v0")
    write_episodes(path, third, env_id="Toy-v0")
    assert_episodes_equal(read_demos(path), first + second + third)
    obs = zarr.open_group(path, mode="r")["data/obs"]  # default readers see every row too
    assert isinstance(obs, zarr.Array) and obs.shape[0] == 17


def test_append_trims_rows_of_an_interrupted_write(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    eps = episodes([4, 6])
    write_episodes(path, eps[:1], env_id="Toy-v0", attrs=BOUNDS)
    # Simulate a crash after data rows were appended but before episode_ends: 3 stray rows.
    zarray(path, "data/obs").append(np.full((3, OBS), 9.0, dtype=np.float32))
    zarray(path, "meta/reset_seed").append(np.array([99]))
    assert read_demos(path).episode_ends.tolist() == [4]  # readers ignore the stray rows
    assert "uncommitted" in inspect_demos(path)
    write_episodes(path, eps[1:], env_id="Toy-v0")
    assert_episodes_equal(read_demos(path), eps)


def test_select_first_and_seeded_random(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    eps = episodes([2, 3, 4, 5, 6, 7])
    write_episodes(path, eps, env_id="Toy-v0", attrs=BOUNDS)
    first = read_demos(path, num_episodes=2)
    assert_episodes_equal(first, eps[:2])
    assert first.attrs["selected_episodes"] == [0, 1]
    a = read_demos(path, num_episodes=3, select="random", seed=7)
    b = read_demos(path, num_episodes=3, select="random", seed=7)
    chosen = a.attrs["selected_episodes"]
    assert chosen == b.attrs["selected_episodes"] == sorted(chosen)
    assert len(set(chosen)) == 3
    assert_episodes_equal(a, [eps[i] for i in chosen])
    others = {
        tuple(read_demos(path, num_episodes=3, select="random", seed=s).attrs["selected_episodes"])
        for s in range(10)
    }
    assert len(others) > 1
    with pytest.raises(ValueError, match="holds only 6"):
        read_demos(path, num_episodes=7)
    with pytest.raises(ValueError, match="select"):
        read_demos(path, select="last")  # type: ignore[arg-type]


def test_env_and_dim_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "d.zarr"
    write_episodes(
        path,
        episodes([3]),
        env_id="Hopper-v5",
        attrs={"action_low": [-1.0] * ACT, "action_high": [1.0] * ACT},
    )
    with pytest.raises(ValueError, match="holds Hopper-v5 demos, expected Pendulum-v1"):
        read_demos(path, expected_env_id="Pendulum-v1")
    assert read_demos(path, expected_env_id="Hopper-v5").n_episodes == 1
    with pytest.raises(ValueError, match="expected 'Hopper-v5', got 'Walker2d-v5'"):
        write_episodes(path, episodes([3]), env_id="Walker2d-v5", attrs=BOUNDS)
    rng = np.random.default_rng(0)
    wide = make_episode(3, 0, rng)
    wide = Episode(
        **{**wide.__dict__, "obs": np.zeros((3, OBS + 1)), "next_obs": np.zeros((3, OBS + 1))}
    )
    with pytest.raises(ValueError, match="obs_dim"):
        write_episodes(path, [wide], env_id="Hopper-v5")
    assert read_demos(path).n_episodes == 1


def test_missing_store_and_bad_episodes(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.zarr"):
        read_demos(tmp_path / "nowhere.zarr")
    path = tmp_path / "d.zarr"
    good = episodes([3])[0]
    bad = {
        "obs": np.array([["a"] * OBS] * 3, dtype=object),
        "reward": np.array([0.0, np.nan, 0.0], dtype=np.float32),
        "action": np.zeros((2, ACT), dtype=np.float32),
        "terminated": np.array([0, 2, 0]),
    }
    for key, value in bad.items():
        with pytest.raises(ValueError, match=key):
            write_episodes(
                path, [Episode(**{**good.__dict__, key: value})], env_id="Toy-v0", attrs=BOUNDS
            )
    with pytest.raises(ValueError, match="reset_seed"):
        write_episodes(
            path, [Episode(**{**good.__dict__, "reset_seed": -1})], env_id="Toy-v0", attrs=BOUNDS
        )
    with pytest.raises(ValueError, match="action_low"):
        write_episodes(path, [good], env_id="NotAnEnv-v0")
    assert not path.exists()  # nothing was written by the failed calls
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a zarr store"):
        write_episodes(tmp_path / "junk", [good], env_id="Toy-v0", attrs=BOUNDS, overwrite=True)
    assert (tmp_path / "junk" / "file.txt").exists()


def linear_policy(obs: np.ndarray) -> np.ndarray:
    w = np.linspace(-0.5, 0.5, 3 * obs.shape[0]).reshape(3, obs.shape[0])
    return np.tanh(w @ obs)


def test_record_verify_and_tamper(tmp_path: Path) -> None:
    path = tmp_path / "hopper.zarr"
    recording = record_episodes(
        "Hopper-v5",
        linear_policy,
        path=path,
        n_episodes=2,
        first_seed=10,
        attrs={"expert_algo": "linear", "expert_steps": 0},
        env_kwargs={"max_episode_steps": 60},
    )
    demos = read_demos(path, expected_env_id="Hopper-v5")
    assert demos.n_episodes == 2 and demos.obs_dim == 11 and demos.act_dim == 3
    assert demos.reset_seeds.tolist() == [10, 11]
    np.testing.assert_allclose(demos.episode_returns, recording.returns)
    assert recording.discarded_fallen == ()
    np.testing.assert_array_equal(demos.action_low, [-1.0, -1.0, -1.0])
    assert demos.attrs["env_kwargs"] == {"max_episode_steps": 60}
    assert demos.attrs["expert_algo"] == "linear"
    for sl in demos.episode_slices():  # each episode ends as the env ended it
        assert demos.terminated[sl.stop - 1] or demos.truncated[sl.stop - 1]
        assert not (demos.terminated[sl][:-1].any() or demos.truncated[sl][:-1].any())

    report = verify_demos(path)
    assert report.ok, report.problems
    assert report.n_episodes == 2
    assert report.max_obs_dev == 0.0 and report.max_reward_dev == 0.0

    act = zarray(path, "data/action")
    original = float(np.asarray(act[5, 1]))
    act[5, 1] = original + 0.3
    tampered = verify_demos(path)
    assert not tampered.ok
    assert tampered.max_obs_dev > 1e-4
    assert "episode 0" in tampered.problems[0]

    act[5, 1] = original  # restore, then tamper with a stored observation instead
    assert verify_demos(path).ok
    obs = zarray(path, "data/obs")
    last = int(demos.episode_ends[-1]) - 1
    obs[last, 0] = float(np.asarray(obs[last, 0])) + 1e-3
    report = verify_demos(path)
    assert not report.ok and report.max_obs_dev == pytest.approx(1e-3, rel=1e-2)
    assert verify_demos(path, num_episodes=1).ok  # episode 0 untouched

    more = record_episodes(
        "Hopper-v5",
        linear_policy,
        path=path,
        n_episodes=1,
        first_seed=12,
        env_kwargs={"max_episode_steps": 60},
    )
    assert read_demos(path).n_episodes == 3
    assert read_demos(path).attrs["episode_returns"][-1] == pytest.approx(float(more.returns[0]))
    with pytest.raises(ValueError, match="env_kwargs"):
        record_episodes("Hopper-v5", linear_policy, path=path, n_episodes=1)


class FallsOnSeeds:
    """A Hopper policy that stands (zero torque: >120 steps) except on the given reset seeds,
    where it pushes every joint to -1 and falls within ~6 steps."""

    def __init__(self, falling_seeds: set[int], seeds: range) -> None:
        env = gym.make("Hopper-v5")
        self.falls_from = {env.reset(seed=s)[0].tobytes(): s in falling_seeds for s in seeds}
        env.close()
        self.falling = False

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        self.falling = self.falls_from.get(obs.tobytes(), self.falling)  # a reset's first obs
        return np.full(3, -1.0 if self.falling else 0.0)


def test_max_fallen_stores_whole_episodes_and_says_which_fell(tmp_path: Path) -> None:
    path = tmp_path / "hopper.zarr"
    kwargs = {"max_episode_steps": 50}
    recording = record_episodes(
        "Hopper-v5", FallsOnSeeds({21, 23}, range(20, 30)), path=path, n_episodes=3,
        first_seed=20, env_kwargs=kwargs, max_fallen=2,
    )  # fmt: skip
    demos = read_demos(path)
    assert demos.reset_seeds.tolist() == [20, 22, 24]  # 21 and 23 fell and were left out
    assert not demos.terminated.any()
    assert list(np.diff(demos.episode_ends, prepend=0)) == [50, 50, 50]
    np.testing.assert_allclose(demos.episode_returns, recording.returns)
    discarded = demos.attrs["discarded_fallen_episodes"]
    assert [d["reset_seed"] for d in discarded] == [21, 23]
    assert list(recording.discarded_fallen) == discarded  # what the caller gets is stored
    fallen_returns = [d["return"] for d in discarded]
    np.testing.assert_allclose(recording.attempted_returns, [*recording.returns, *fallen_returns])
    assert max(fallen_returns) < recording.returns.min()  # a fall costs return
    assert all(d["steps"] < 50 for d in discarded) and demos.attrs["max_fallen"] == 2
    assert verify_demos(path).ok

    with pytest.raises(TooManyFallsError, match="2 of 4 episodes terminated"):
        record_episodes(
            "Hopper-v5", FallsOnSeeds({21, 23}, range(20, 30)), path=tmp_path / "no.zarr",
            n_episodes=3, first_seed=20, env_kwargs=kwargs, max_fallen=1,
        )  # fmt: skip
    assert not (tmp_path / "no.zarr").exists()
    # without max_fallen every episode is stored as it ended
    record_episodes(
        "Hopper-v5", FallsOnSeeds({21}, range(20, 30)), path=tmp_path / "all.zarr",
        n_episodes=2, first_seed=20, env_kwargs=kwargs,
    )  # fmt: skip
    assert read_demos(tmp_path / "all.zarr").terminated.sum() == 1


def test_subsampled_keeps_every_nth_pair_of_each_episode() -> None:
    """GAIL's protocol on the committed Hopper demo: one 1000-step trajectory, every 20th
    (s, a) pair, 50 pairs, each with its own next_obs; the server trains on exactly those."""
    from sd2ail_reward.config import preset
    from sd2ail_reward.server.loading import load_learner
    from sd2ail_reward.server.options import LearnerSpec, ServeOptions

    store = Path(__file__).resolve().parents[1] / "demos" / "Hopper-v5.zarr"
    full = read_demos(store, num_episodes=2)
    sub = full.subsampled(20)
    assert sub.n_episodes == 2 and list(sub.episode_ends) == [50, 100]
    first = np.arange(0, 1000, 20)
    np.testing.assert_array_equal(sub.obs[:50], full.obs[first])
    np.testing.assert_array_equal(sub.action[50:], full.action[1000 + first])
    np.testing.assert_array_equal(sub.next_obs[:50], full.next_obs[first])
    assert sub.attrs["subsample"] == 20 and full.subsampled(1) is full
    with pytest.raises(ValueError):
        full.subsampled(0)

    spec = LearnerSpec(demos=store, config=preset("hopper", "diffail"), num_demos=1, subsample=20)
    loaded = load_learner(spec, ServeOptions(), None)
    assert loaded.learner.replay.expert_rows().shape[0] == 50
    assert loaded.demos["subsample"] == 20
