"""The evidence grids' runner: a finished run's after-steps (an expert's record + verify) run
once, in order, and a failing step leaves the run unmarked so that the next sitting retries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import grid


def finished_run(root: Path, after: tuple[tuple[str, ...], ...]) -> grid.GridRun:
    run = grid.GridRun("r", ("--env", "Pendulum-v1"), steps=10, after=after)
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "config.json").write_text(json.dumps({"algo": "sd2ail"}))
    (run.run_dir / "summary.json").write_text(json.dumps({"env_steps": 10, "best_return": 0}))
    return run


def test_after_steps_run_once_and_a_failure_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(grid, "GRID_ROOT", tmp_path)
    run = finished_run(tmp_path, after=(("demos", "inspect", "{run_dir}/missing.zarr"),))
    grid.run_after_steps(run)
    assert not (run.run_dir / ".after-done").exists()  # the store is missing: a failure
    assert "missing.zarr" in (run.run_dir / "train.log").read_text()

    ok = grid.GridRun("r", run.args, steps=10, after=(("--help",), ("--help",)))
    grid.run_after_steps(ok)
    assert (run.run_dir / ".after-done").exists()
    log_size = (run.run_dir / "train.log").stat().st_size
    grid.run_after_steps(ok)  # marked: nothing runs again
    assert (run.run_dir / "train.log").stat().st_size == log_size


def test_an_unfinished_run_gets_no_after_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(grid, "GRID_ROOT", tmp_path)
    run = finished_run(tmp_path, after=(("--help",),))
    (run.run_dir / "summary.json").write_text(json.dumps({"env_steps": 5, "best_return": 0}))
    grid.run_after_steps(run)
    assert not (run.run_dir / ".after-done").exists()


def test_a_run_trained_on_is_recorded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Recorded at its first target, then started again toward a raised one: its after-steps
    must run again when it ends, so the marker of the first recording goes."""
    monkeypatch.setattr(grid, "GRID_ROOT", tmp_path)
    monkeypatch.setattr(grid, "rebuild_runs_csv", lambda: None)
    run = finished_run(tmp_path, after=(("--help",),))
    grid.run_after_steps(run)
    assert (run.run_dir / ".after-done").exists()
    raised = grid.GridRun(run.name, run.args, steps=run.steps, target=1.0, after=run.after)
    (run.run_dir / "summary.json").write_text(json.dumps({"env_steps": 5, "best_return": 0}))
    # a stored config `train --resume` refuses at once: the run ends in failure, unrecorded
    (run.run_dir / "config.json").write_text(json.dumps({"algo": "sd2ail", "no_such_flag": 1}))
    assert not grid.finished(raised)
    grid.run_grid([raised], parallel=1, nice=0)
    assert "no_such_flag" in (run.run_dir / "train.log").read_text()
    assert not (run.run_dir / ".after-done").exists()


def test_every_expert_is_recorded_against_its_floor_then_verified() -> None:
    for run in grid.experts():
        record, verify = run.after
        env = run.name.split("-")[1] + "-v5"
        assert record[:2] == ("demos", "record") and verify[:2] == ("demos", "verify")
        assert record[record.index("--min-return") + 1] == str(grid.EXPERT_FLOORS[env])
        # 40 x 1000 steps: a fallen episode is left out (named in the store), at most 4 (10%)
        max_fallen = int(record[record.index("--max-fallen") + 1])
        assert max_fallen == grid.EXPERT_MAX_FALLEN[env] and 0 <= max_fallen <= 4
        assert grid.EXPERT_TARGETS[env] >= 1.1 * grid.EXPERT_FLOORS[env]
        assert verify[-1] == record[record.index("--out") + 1]


def test_a_started_run_resumes_toward_the_grid_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A target raised in the grid after the run started reaches the resumed run."""
    monkeypatch.setattr(grid, "GRID_ROOT", tmp_path)
    run = grid.GridRun("expert", ("--env", "Walker2d-v5"), steps=1000, target=4700.0)
    assert run.command()[-2:] == ["--target-return", "4700.0"]
    run.run_dir.mkdir()
    (run.run_dir / "config.json").write_text("{}")
    resumed = run.command()
    assert "--resume" in resumed and "Walker2d-v5" not in resumed  # the stored config
    assert resumed[-2:] == ["--target-return", "4700.0"]


def test_an_expert_counts_only_evaluations_without_falls_on_every_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every expert run asks for full episodes, fresh and resumed; the grid calls it finished
    by the evaluation its best actor comes from, not by the best of all evaluations."""
    monkeypatch.setattr(grid, "GRID_ROOT", tmp_path)
    ant = next(run for run in grid.experts() if "Ant" in run.name)
    assert ant.command()[-3:] == ["--target-return", "5000.0", "--target-full-episodes"]
    ant.run_dir.mkdir()
    (ant.run_dir / "config.json").write_text("{}")
    assert ant.command()[-3:] == ["--target-return", "5000.0", "--target-full-episodes"]
    summary = {"env_steps": 500_000, "best_return": 5100.0, "best_actor_return": 4504.0}
    (ant.run_dir / "summary.json").write_text(json.dumps(summary))
    assert not grid.finished(ant)  # 5100 came from an evaluation in which the ant fell
    summary["best_actor_return"] = 5020.0
    (ant.run_dir / "summary.json").write_text(json.dumps(summary))
    assert grid.finished(ant)


def test_runs_differing_in_a_recipe_setting_are_separate_configurations() -> None:
    from benchmarks.runs_csv import recipe_label

    base = {"sac_recipe": "expert", "lr": 1e-3, "adam_beta1": 0.9, "alpha": 1.0}
    assert recipe_label({**base, "fixed_length": False, "chunk": 1000}) == "expert"
    assert recipe_label({**base, "fixed_length": False, "chunk": 64}) == "expert, chunk 64"
    assert recipe_label({**base, "lr": 3e-4, "fixed_length": True}) == (
        "expert, lr 0.0003, fixed_length True"
    )


def test_a_bf16_server_run_is_a_configuration_of_its_own() -> None:
    from benchmarks.runs_csv import extra_terms

    bf16, sac_bf16 = grid.hopper_cost()
    fp32 = grid.hopper_expert_recipe()[0]
    assert set(bf16.args) - set(fp32.args) == {
        "--server-arg=--compute-dtype=bfloat16",
        "--pin-cores",
    }
    # `make run`'s command (no pinning) with SAC's trunks in bf16 as well
    assert set(sac_bf16.args) - set(fp32.args) == {
        "--server-arg=--compute-dtype=bfloat16",
        "--sac-dtype",
        "bfloat16",
    }
    both = {"sac_dtype": "bfloat16", "server_args": ["--compute-dtype=bfloat16"]}
    assert extra_terms(both) == "server bf16;SAC bf16"
    assert extra_terms({"sac_dtype": "bfloat16"}) == "SAC bf16"
    assert extra_terms({"sac_dtype": "float32"}) == "none"
    config = {"server_args": [a.split("=", 1)[1] for a in bf16.args if "--server-arg" in a]}
    assert extra_terms(config) == "server bf16"
    assert extra_terms({"server_args": ["--updates-per-transition=0.25"]}) == "none"
    (normalised,) = [r for r in grid.new_tasks() if "discnorm" in r.name]
    assert "--server-arg=--normalize-obs" in normalised.args
    assert extra_terms({"server_args": ["--normalize-obs"]}) == "disc obs normalised"


def test_a_run_without_demos_has_no_expert_return() -> None:
    """An expert trained from scratch (`--demos ''`) before its first summary."""
    import math

    from benchmarks.runs_csv import expert_return

    assert math.isnan(expert_return({"demos": ""}, {}))
    assert expert_return({"demos": ""}, {"expert_return": 5.0}) == 5.0


def test_a_run_waits_for_its_demo_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(grid, "GRID_ROOT", tmp_path)
    waiting = grid.GridRun("w", ("--env", "Ant-v5", "--demos", "demos/No-v0.zarr"), steps=10)
    ready = grid.GridRun("r", ("--env", "Hopper-v5", "--demos", "demos/Hopper-v5.zarr"), 10)
    assert waiting.missing_demos() == grid.REPO / "demos" / "No-v0.zarr"
    assert ready.missing_demos() is None
    grid.run_grid([waiting], parallel=1, nice=0)  # returns at once: nothing to start
    assert "waits for" in capsys.readouterr().out
    assert not waiting.run_dir.exists()
    new_tasks = {run.name: run for run in grid.new_tasks()}
    assert new_tasks["halfcheetah-sd2ail-1demo-expertrecipe-seed0"].missing_demos() is None


def test_a_store_committed_while_the_lane_works_starts_its_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lane that passed a run by for its missing store looks again while it works on
    others: the store, committed meanwhile (here: found from the second look on), starts it
    in the same sitting."""
    monkeypatch.setattr(grid, "GRID_ROOT", tmp_path)
    monkeypatch.setattr(grid, "rebuild_runs_csv", lambda: None)
    store = tmp_path / "Late-v0.zarr"
    looks = {"n": 0}

    def missing_until_second_look(run: grid.GridRun) -> Path | None:
        if "--demos" not in run.args:
            return None
        looks["n"] += 1
        return store if looks["n"] == 1 else None

    monkeypatch.setattr(grid.GridRun, "missing_demos", missing_until_second_look)
    # each train refuses its unknown flag at once
    late = grid.GridRun("late", ("--demos", str(store), "--no-such-flag"), steps=10)
    busy = grid.GridRun("busy", ("--reward", "env", "--no-such-flag"), steps=10)
    grid.run_grid([late, busy], parallel=1, nice=0)
    out = capsys.readouterr().out
    assert "late: waits for" in out
    assert out.index(" start busy:") < out.index("demo store now there for: late")
    assert out.index("demo store now there for: late") < out.index(" start late:")
    assert "still missing" not in out


def test_experts_train_sac_in_bf16_only_where_the_cpu_has_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for native, expected in ((True, ["--sac-dtype", "bfloat16"]), (False, [])):
        monkeypatch.setattr(grid, "cpu_bf16_supported", lambda native=native: native)
        for run in grid.experts():
            assert [a for a in run.args if a in ("--sac-dtype", "bfloat16")] == expected


def test_a_run_finished_in_the_archive_is_not_run_again_on_a_new_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new machine's grid root is empty; the repo's archive still says which runs ended."""
    monkeypatch.setattr(grid, "GRID_ROOT", tmp_path / "grid")
    monkeypatch.setattr(grid, "ARCHIVE", tmp_path / "archive")
    done = grid.GridRun("done", ("--env", "Pendulum-v1"), steps=10, after=(("--help",),))
    partial = grid.GridRun("partial", ("--env", "Pendulum-v1"), steps=10)
    for run, steps in ((done, 10), (partial, 4)):
        archived = tmp_path / "archive" / run.name
        archived.mkdir(parents=True)
        (archived / "config.json").write_text(json.dumps({"algo": "sd2ail"}))
        (archived / "summary.json").write_text(json.dumps({"env_steps": steps, "best_return": 0}))
    assert grid.finished(done) and not grid.finished(partial)
    assert "--resume" not in partial.command()  # its checkpoints are gone: from step 0
    grid.run_after_steps(done)  # no weights here to record from: nothing runs
    assert not (done.run_dir / ".after-done").exists()

    partial.run_dir.mkdir(parents=True)  # restarted here: the grid root's state decides
    (partial.run_dir / "config.json").write_text(json.dumps({"algo": "sd2ail"}))
    (partial.run_dir / "summary.json").write_text(json.dumps({"env_steps": 10, "best_return": 0}))
    assert grid.finished(partial)


def test_the_subsampled_hopper_protocol_runs_all_share_one_server_arithmetic() -> None:
    runs = [r for r in grid.hopper_ablation() if "-sub20-" in r.name and "-bc-" not in r.name]
    assert len({tuple(a for a in r.args if "compute-dtype" in a) for r in runs}) == 1
    full = [r for r in grid.hopper_ablation() if "-sub" not in r.name and "-bc-" not in r.name]
    assert not any("--server-arg=--compute-dtype=bfloat16" in r.args for r in full)


def test_a_long_run_goes_on_from_its_carry_on_a_new_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An expert stopped at a sitting's end: its carry (checkpoint with the newest transitions,
    best actor) and archived files are all a new machine has, and the run goes on from the
    carried step, not from 0; once finished, its carry is removed."""
    import shutil
    import subprocess

    from agents.checkpoints import sac_checkpoint_store

    monkeypatch.setattr(grid, "ARCHIVE", tmp_path / "archive")
    monkeypatch.setattr(grid, "CARRY", tmp_path / "carry")
    monkeypatch.setattr(grid, "CARRY_TRANSITIONS", 100)
    args = (
        "--env", "Hopper-v5", "--demos", "", "--reward", "env", "--sac-recipe", "expert",
        "--start-steps", "300", "--chunk", "100", "--eval-every", "300", "--eval-episodes", "2",
        "--hidden-sizes", "32", "32", "--batch-size", "64",
    )  # fmt: skip

    def train(run: grid.GridRun) -> None:
        proc = subprocess.run(
            run.command(), cwd=grid.REPO, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    monkeypatch.setattr(grid, "GRID_ROOT", tmp_path / "machine1")
    train(grid.GridRun("expert", args, steps=600))
    run = grid.GridRun("expert", args, steps=900)
    grid.write_carries([run])
    carried = sac_checkpoint_store(run.run_dir).load_latest()
    (tmp_path / "archive" / "expert").mkdir(parents=True)
    for name in grid.CARRY_RUN_FILES:
        shutil.copyfile(run.run_dir / name, tmp_path / "archive" / "expert" / name)

    monkeypatch.setattr(grid, "GRID_ROOT", tmp_path / "machine2")  # a new machine
    assert grid.restore_carry(run)
    assert not grid.restore_carry(run)  # the run is here now: its own files decide
    assert "--resume" in run.command()
    restored = sac_checkpoint_store(run.run_dir).load_latest()
    assert restored.step == carried.step == 600
    for name, weights in carried.state["algorithm"].items():
        if isinstance(weights, torch.Tensor):
            assert torch.equal(weights, restored.state["algorithm"][name]), name
    assert int(restored.state["buffer"]["size"]) == 100
    assert (run.run_dir / "best_actor.pt").exists()
    train(run)

    steps = [int(r.split(",")[0]) for r in (run.run_dir / "metrics.csv").read_text().split()[1:]]
    assert steps == [300, 600, 900]
    provenance = json.loads((run.run_dir / "provenance.json").read_text())
    assert provenance["carries"] == [{"at_step": 600, "carried_buffer": 100}]
    assert [s["from_step"] for s in provenance["sessions"]] == [0, 600]
    final = sac_checkpoint_store(run.run_dir).load_latest()
    assert final.step == 900 and int(final.state["buffer"]["size"]) == 100 + 300
    grid.write_carries([run])
    assert not (tmp_path / "carry" / "expert").exists()


@pytest.mark.slow
def test_an_imitation_run_goes_on_from_its_carry_with_its_reward_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run against a reward server carries the server generation saved with its SAC
    checkpoint: on a new machine the server resumes from it (its discriminator, buffers and
    pushed-transition count), not from scratch."""
    import shutil
    import subprocess

    from agents.checkpoints import sac_checkpoint_store
    from sd2ail_reward.checkpoint import CheckpointStore

    monkeypatch.setattr(grid, "ARCHIVE", tmp_path / "archive")
    monkeypatch.setattr(grid, "CARRY", tmp_path / "carry")
    monkeypatch.setattr(grid, "CARRY_TRANSITIONS", 100)
    args = (
        "--env", "Pendulum-v1", "--demos", "demos/Pendulum-v1.zarr", "--demo-episodes", "6",
        "--algo", "gail", "--start-steps", "300", "--chunk", "100", "--eval-every", "300",
        "--eval-episodes", "2", "--hidden-sizes", "32", "32", "--batch-size", "64",
        "--server-arg=--hidden-dim=32", "--server-arg=--agent-batch=64",
        "--server-arg=--expert-batch=64", "--server-arg=--min-agent-size=64",
    )  # fmt: skip

    def train(run: grid.GridRun) -> str:
        proc = subprocess.run(
            run.command(), cwd=grid.REPO, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return proc.stdout + proc.stderr

    monkeypatch.setattr(grid, "GRID_ROOT", tmp_path / "machine1")
    run = grid.GridRun("imitation", args, steps=900)
    assert run.carried
    train(grid.GridRun("imitation", args, steps=600))
    grid.write_carries([run])
    paired = sac_checkpoint_store(run.run_dir).load_latest().meta["server_generation"]
    server_then = CheckpointStore(run.run_dir / "server").load(paired)
    assert (tmp_path / "carry" / "imitation" / "server" / paired / "state.pt").exists()
    (tmp_path / "archive" / "imitation").mkdir(parents=True)
    for name in grid.CARRY_RUN_FILES:
        shutil.copyfile(run.run_dir / name, tmp_path / "archive" / "imitation" / name)

    monkeypatch.setattr(grid, "GRID_ROOT", tmp_path / "machine2")  # a new machine
    assert grid.restore_carry(run)
    restored = CheckpointStore(run.run_dir / "server").load_latest()
    assert restored.path.name == paired
    for name, weights in server_then.state["disc"].items():
        assert torch.equal(weights, restored.state["disc"][name]), name
    out = train(run)
    assert f"--resume-from {paired}" in out
    assert (
        f"resuming from checkpoint {run.run_dir / 'server' / paired} "
        in (run.run_dir / "server.log").read_text()
    )
    steps = [int(r.split(",")[0]) for r in (run.run_dir / "metrics.csv").read_text().split()[1:]]
    assert steps == [300, 600, 900]
    final = CheckpointStore(run.run_dir / "server").load_latest()
    # the resumed server counts on from the carried one: 600 transitions, then 300 more
    assert server_then.meta["total_pushed"] == 600 and final.meta["total_pushed"] == 900
    assert final.state["counters"]["n_updates"] > server_then.state["counters"]["n_updates"]


def test_a_server_generation_that_does_not_verify_is_not_adopted(tmp_path: Path) -> None:
    from sd2ail_reward.checkpoint import CheckpointError, CheckpointStore

    source = CheckpointStore(tmp_path / "a")
    generation = source.save({"x": torch.ones(3)}, step=5)
    target = CheckpointStore(tmp_path / "b")
    assert target.adopt(generation).name == generation.name
    assert torch.equal(target.load_latest().state["x"], torch.ones(3))
    with pytest.raises(CheckpointError):  # the name is taken
        target.adopt(generation)
    (generation / "state.pt").write_bytes(b"corrupt")
    with pytest.raises(CheckpointError, match="sha256"):
        CheckpointStore(tmp_path / "c").adopt(generation)
    assert not (tmp_path / "c" / generation.name).exists()


def test_the_newest_transitions_are_kept_in_insertion_order_when_the_buffer_wrapped() -> None:
    from agents.checkpoints import newest_transitions

    obs = np.arange(5, dtype=np.float64)[:, None]  # slots 0..4; slot 2 is the oldest
    arrays = {"maxsize": np.array(5), "size": np.array(5), "insertion_idx": np.array(2)}
    arrays.update({f"data/{f}": obs.copy() for f in ("obs", "obs_next", "rew", "act")})
    arrays.update({f"data/{f}": np.zeros(5, bool) for f in ("terminated", "truncated", "done")})
    arrays["data/info/x"] = obs.copy()
    kept = newest_transitions(arrays, keep=3)
    assert kept["data/obs"][:, 0].tolist() == [4.0, 0.0, 1.0]  # the three written last
    assert kept["data/obs"].dtype == np.float32 and "data/info/x" not in kept
    assert int(kept["size"]) == 3 and int(kept["insertion_idx"]) == 3


def test_a_carry_stores_obs_next_only_where_it_is_not_the_next_obs() -> None:
    from agents.checkpoints import join_next_obs, split_next_obs

    rng = np.random.default_rng(0)
    obs = rng.normal(size=(9, 4)).astype(np.float32)
    obs_next = np.roll(obs, -1, axis=0)  # two episodes: rows 0-3 and 4-8 (the newest)
    obs_next[3] = rng.normal(size=4)  # the first episode's last obs_next, not row 4's obs
    obs_next[8] = rng.normal(size=4)
    obs_next[6, 2] += 1e-6  # one component off: still stored whole
    breaks, rows = split_next_obs(obs, obs_next)
    assert breaks.tolist() == [3, 6, 8] and rows.shape == (3, 4)
    np.testing.assert_array_equal(join_next_obs(obs, breaks, rows), obs_next)


def test_late_in_a_sitting_a_carried_run_takes_the_lane_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(grid, "GRID_ROOT", tmp_path)
    monkeypatch.setattr(grid, "rebuild_runs_csv", lambda: None)
    # each train refuses its unknown flag at once: the test times the order they start in
    imitation = grid.GridRun("i", ("--algo", "bc", "--no-such-flag"), steps=10)
    expert = grid.GridRun("e", ("--reward", "env", "--no-such-flag"), steps=10)
    assert not imitation.carried and expert.carried and all(r.carried for r in grid.experts())
    # BC keeps no checkpoints; every SAC run does, its reward server's state with it
    assert all(r.carried == ("-bc-" not in r.name) for r in grid.hopper_ablation())
    grid.run_grid([imitation, expert], parallel=1, nice=0, uncarried_start_by=0.0)
    out = capsys.readouterr().out
    assert "i: too late in this sitting" in out
    # the expert first; the imitation run once nothing else is left, not dropped
    assert out.index(" start e:") < out.index("start late") < out.index(" start i:")
    assert imitation.run_dir.exists() and expert.run_dir.exists()
