"""Minari <-> zarr demo store conversion (sd2ail_reward/minari_io.py, `demos import-minari` /
`export-minari`). Needs the minari extra (with `create`, for Minari's DataCollector).

The Minari dataset is recorded here with Minari's own `DataCollector` into a temporary
MINARI_DATASETS_PATH (no download): MountainCarContinuous-v0 driven by an energy-pumping
policy, so episodes end by termination, plus one cut short by a reset (Minari marks it
truncated); one reset with a small seed, one with a 64-bit seed beyond int64, one unseeded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest_server import REPO, write_demo_store

minari = pytest.importorskip(
    "minari", reason="minari extra not installed (pip install -e '.[minari]')"
)
pytest.importorskip("jax", reason="Minari's DataCollector needs minari[create] (jax)")
# Minari's create_dataset warns about each provenance field left None (eval_env, ...).
pytestmark = pytest.mark.filterwarnings("ignore:.*is set to None:UserWarning")

from sd2ail_reward.cli import main as cli_main  # noqa: E402
from sd2ail_reward.demo_replay import verify_demos  # noqa: E402
from sd2ail_reward.demos import Episode, read_demos, write_episodes  # noqa: E402
from sd2ail_reward.minari_io import export_minari, import_minari  # noqa: E402

ENV_ID = "MountainCarContinuous-v0"
DATASET = "sd2ail/mountaincar/pumping-v0"
BIG_SEED = 2**64 - 3
"""A DataCollector autoseed can be any 64-bit value; this one does not fit meta/reset_seed."""


@pytest.fixture
def minari_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def record_dataset(dataset_id: str = DATASET) -> Any:
    """Three episodes through Minari's DataCollector (see the module docstring)."""
    import gymnasium as gym
    from minari import DataCollector

    env = DataCollector(gym.make(ENV_ID))
    rng = np.random.default_rng(0)
    resets = [
        ({"seed": 7}, None),
        ({"seed": BIG_SEED}, 40),  # cut after 40 steps by the next reset: truncated
        ({"options": {"minari_autoseed": False}}, None),  # no seed at all
    ]
    for kwargs, cut in resets:
        obs, _ = env.reset(**kwargs)
        for t in range(999):
            push = 1.0 if obs[1] >= 0 else -1.0
            act = np.clip(0.9 * push + 0.1 * rng.normal(size=1), -1, 1).astype(np.float32)
            obs, _, term, trunc, _ = env.step(act)
            if term or trunc or (cut is not None and t + 1 == cut):
                break
    dataset = env.create_dataset(
        dataset_id, algorithm_name="energy pumping", author="sd2ail tests", code_permalink="-"
    )
    env.close()
    return dataset


def assert_minari_equal(a: Any, b: Any, *, rewards_f32: bool) -> None:
    """Same episodes (arrays, dtypes, seeds, options), env spec, spaces and provenance."""
    assert a.total_episodes == b.total_episodes
    assert a.env_spec == b.env_spec
    assert a.observation_space == b.observation_space
    assert a.action_space == b.action_space
    for ea, eb in zip(a.iterate_episodes(), b.iterate_episodes(), strict=True):
        for key in ("observations", "actions", "rewards", "terminations", "truncations"):
            x, y = np.asarray(getattr(ea, key)), np.asarray(getattr(eb, key))
            assert x.dtype == y.dtype, key
            if key == "rewards" and rewards_f32:  # the store keeps float32 rewards
                np.testing.assert_array_equal(x.astype(np.float32), y.astype(np.float32))
            else:
                np.testing.assert_array_equal(x, y, err_msg=key)
    ids = range(a.total_episodes)
    meta_a = list(a.storage.get_episode_metadata(ids))
    meta_b = list(b.storage.get_episode_metadata(ids))
    for ma, mb in zip(meta_a, meta_b, strict=True):
        assert ma.get("seed") == mb.get("seed")
        assert ma.get("options") == mb.get("options")
    md_a, md_b = a.storage.metadata, b.storage.metadata
    for key in ("algorithm_name", "author", "code_permalink", "eval_env_spec"):
        assert md_a.get(key) == md_b.get(key), key


def test_import_keeps_steps_boundaries_seeds_and_provenance(minari_root: Path, tmp_path: Path):
    dataset = record_dataset()
    out = tmp_path / "mc.zarr"
    done = import_minari(DATASET, out)
    demos = read_demos(out)

    episodes = list(dataset.iterate_episodes())
    assert done.n_episodes == demos.n_episodes == 3
    lengths = [len(ep) for ep in episodes]
    np.testing.assert_array_equal(demos.episode_ends, np.cumsum(lengths))
    for ep, sl in zip(episodes, demos.episode_slices(), strict=True):
        np.testing.assert_array_equal(demos.obs[sl], ep.observations[:-1])
        np.testing.assert_array_equal(demos.next_obs[sl], ep.observations[1:])
        np.testing.assert_array_equal(demos.action[sl], ep.actions)
        np.testing.assert_array_equal(demos.reward[sl], ep.rewards.astype(np.float32))
        np.testing.assert_array_equal(demos.terminated[sl], ep.terminations)
        np.testing.assert_array_equal(demos.truncated[sl], ep.truncations)
    ends = [
        (bool(demos.terminated[s.stop - 1]), bool(demos.truncated[s.stop - 1]))
        for s in demos.episode_slices()
    ]
    assert ends[0] == (True, False) and ends[1] == (False, True)  # terminated; cut -> truncated

    a = demos.attrs
    assert demos.env_id == ENV_ID and a["env_kwargs"] == {}
    assert a["action_low"] == [-1.0] and a["action_high"] == [1.0]
    assert a["minari_dataset_id"] == DATASET and a["minari_episode_ids"] == [0, 1, 2]
    assert a["minari_metadata"]["algorithm_name"] == "energy pumping"
    assert json.loads(a["minari_env_spec"])["id"] == ENV_ID
    # seed 7 is kept; the 64-bit seed and the missing one are recorded, not invented
    assert demos.reset_seeds.tolist() == [7, 0, 0]
    assert a["minari_seeds"] == ["7", str(BIG_SEED), None]
    assert a["minari_unreplayable_episodes"] == [1, 2] == list(done.unreplayable_episodes)
    # the stored seed replays episode 0 exactly (the demo store's replay contract)
    assert verify_demos(out, num_episodes=1).ok

    sub = import_minari(DATASET, tmp_path / "sub.zarr", episodes=[2, 0])
    picked = read_demos(tmp_path / "sub.zarr")
    assert sub.n_episodes == 2 and picked.attrs["minari_episode_ids"] == [2, 0]
    np.testing.assert_array_equal(picked.action[: lengths[2]], episodes[2].actions)
    with pytest.raises(FileExistsError):
        import_minari(DATASET, out)


def test_minari_round_trip_through_a_store_is_exact(minari_root: Path, tmp_path: Path):
    original = record_dataset()
    import_minari(DATASET, tmp_path / "mc.zarr")
    export_minari(tmp_path / "mc.zarr", "sd2ail/mountaincar/back-v0")
    back = minari.load_dataset("sd2ail/mountaincar/back-v0")
    # float32 observations and actions, flags, seeds (the 64-bit one and None too), options,
    # env spec, spaces and provenance come back exactly; float64 rewards to float32 precision
    assert_minari_equal(original, back, rewards_f32=True)


def test_store_round_trip_through_minari_is_exact(minari_root: Path, tmp_path: Path):
    src = read_demos(REPO / "demos" / "Pendulum-v1.zarr", episodes=[6, 0])
    episodes = [
        Episode(
            obs=src.obs[sl],
            action=src.action[sl],
            next_obs=src.next_obs[sl],
            reward=src.reward[sl],
            terminated=src.terminated[sl],
            truncated=src.truncated[sl],
            reset_seed=int(src.reset_seeds[i]),
        )
        for i, sl in enumerate(src.episode_slices())
    ]
    provenance = {k: v for k, v in src.attrs.items() if k != "selected_episodes"}
    store = tmp_path / "pendulum.zarr"
    write_episodes(store, episodes, env_id="Pendulum-v1", attrs=provenance)

    exported = export_minari(store, "sd2ail/pendulum/expert-v0")
    assert exported.n_episodes == 2 and exported.n_steps == 400
    dataset = minari.load_dataset("sd2ail/pendulum/expert-v0")
    assert dataset.env_spec.id == "Pendulum-v1"
    assert [m["seed"] for m in dataset.storage.get_episode_metadata([0, 1])] == [10006, 10000]

    import_minari("sd2ail/pendulum/expert-v0", tmp_path / "back.zarr")
    a, b = read_demos(store), read_demos(tmp_path / "back.zarr")
    for key in ("obs", "action", "next_obs", "reward", "terminated", "truncated"):
        x, y = getattr(a, key), getattr(b, key)
        assert x.dtype == y.dtype and np.array_equal(x, y), key
    np.testing.assert_array_equal(a.episode_ends, b.episode_ends)
    np.testing.assert_array_equal(a.reset_seeds, b.reset_seeds)
    for key, value in a.attrs.items():  # every original attr (provenance included) is back
        assert b.attrs[key] == value, key
    assert b.attrs["minari_dataset_id"] == "sd2ail/pendulum/expert-v0"
    assert verify_demos(tmp_path / "back.zarr").ok


def test_cli_import_and_export(
    minari_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record_dataset()
    out = tmp_path / "cli.zarr"
    assert cli_main(["demos", "import-minari", DATASET, str(out), "--episodes", "0", "1"]) == 0
    said = capsys.readouterr().out
    assert "2 episodes" in said and "episodes [1] have no int64 reset seed" in said
    assert read_demos(out).attrs["minari_episode_ids"] == [0, 1]
    # by path as well as by id; an existing store needs --overwrite
    path = minari_root / DATASET
    assert cli_main(["demos", "import-minari", str(path), str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert cli_main(["demos", "import-minari", str(path), str(out), "--overwrite"]) == 0
    assert read_demos(out).n_episodes == 3

    assert cli_main(["demos", "export-minari", str(out), "sd2ail/mountaincar/cli-v0"]) == 0
    assert "3 episodes" in capsys.readouterr().out
    assert minari.load_dataset("sd2ail/mountaincar/cli-v0").total_episodes == 3

    assert cli_main(["demos", "import-minari", "sd2ail/nothing/here-v0", str(out)]) == 2
    assert "minari download" in capsys.readouterr().err


def test_export_refuses_episodes_without_one_observation_sequence(
    minari_root: Path, tmp_path: Path
) -> None:
    """Minari stores T+1 observations per episode: a store whose next_obs[t] is not
    obs[t+1] (the synthetic test demos) cannot be written without losing data."""
    store = write_demo_store(tmp_path / "synthetic.zarr", n_episodes=1, steps=20)
    with pytest.raises(ValueError, match="next_obs"):
        export_minari(store, "sd2ail/pendulum/bad-v0")


def test_library_imports_minari_lazily() -> None:
    code = (
        "import sys, sd2ail_reward.minari_io, sd2ail_reward.cli; "
        "assert 'minari' not in sys.modules, 'minari imported eagerly'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
