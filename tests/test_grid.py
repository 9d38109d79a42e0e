"""The evidence grids' runner: a finished run's after-steps (an expert's record + verify) run
once, in order, and a failing step leaves the run unmarked so that the next sitting retries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


def test_every_expert_is_recorded_against_its_floor_then_verified() -> None:
    for run in grid.experts():
        record, verify = run.after
        env = run.name.split("-")[1] + "-v5"
        assert record[:2] == ("demos", "record") and verify[:2] == ("demos", "verify")
        assert record[record.index("--min-return") + 1] == str(grid.EXPERT_FLOORS[env])
        assert verify[-1] == record[record.index("--out") + 1]


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

    (bf16,) = grid.hopper_cost()
    fp32 = grid.hopper_expert_recipe()[0]
    assert set(bf16.args) - set(fp32.args) == {
        "--server-arg=--compute-dtype=bfloat16",
        "--pin-cores",
    }
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
