"""runs.csv from run directories: a run that stopped at its target return is finished (not
partial), a run without demos has no expert return, and the README's task table describes the
committed demo stores."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import runs_csv
from benchmarks.grid import GridRun
from sd2ail_reward.demos import read_demos


def write_run(root: Path, name: str, steps: int, returns: list[float]) -> Path:
    run = root / name
    run.mkdir()
    config = {"env": "HalfCheetah-v5", "demos": "", "reward": "env", "algo": "sd2ail"}
    config |= {"num_demos": 1, "seed": 0, "steps": steps, "sac_recipe": "expert", "chunk": 1000}
    (run / "config.json").write_text(json.dumps(config))
    every = steps // len(returns) // 2
    rows = ["env_step,eval_return_mean,wall_time"]
    rows += [f"{every * (i + 1)},{r},{10 * i}" for i, r in enumerate(returns)]
    (run / "metrics.csv").write_text("\n".join(rows) + "\n")
    return run


def test_a_run_stopped_at_its_target_return_is_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = GridRun("expert-X-seed0", (), steps=1000, target=100.0)
    short = GridRun("expert-Y-seed0", (), steps=1000, target=100.0)
    monkeypatch.setattr(runs_csv, "GRID_RUNS", {r.name: r for r in (target, short)})
    reached = runs_csv.row_of(write_run(tmp_path, target.name, 1000, [10.0, 120.0]), {})
    missed = runs_csv.row_of(write_run(tmp_path, short.name, 1000, [10.0, 90.0]), {})
    assert reached["status"] == "finished" and reached["env_steps"] < 1000
    assert missed["status"] == "partial"
    assert math.isnan(reached["expert_return"]) and runs_csv.expert_label(reached) == "-"
    assert reached["algo"] == "sac" and reached["best_return"] == 120.0


def test_task_table_describes_the_committed_stores() -> None:
    table = runs_csv.tasks_markdown([])
    hopper = next(line for line in table.splitlines() if line.startswith("| Hopper-v5 "))
    assert "40 episodes x 1000 steps" in hopper and "| 0 / 0 |" in hopper
    expert = json.loads((runs_csv.REPO / "demos" / "Hopper-v5.expert.json").read_text())
    assert f"{expert['expert_eval_return']:.0f}"[:2] in hopper  # the store's returns, ~3160
    assert "| Ant-v5 | none yet |" in table or (runs_csv.REPO / "demos" / "Ant-v5.zarr").exists()
    # a store that left fallen episodes out says so, with the unfiltered mean beside
    walker = next(line for line in table.splitlines() if line.startswith("| Walker2d-v5 "))
    fell = read_demos(runs_csv.REPO / "demos" / "Walker2d-v5.zarr").attrs[
        "discarded_fallen_episodes"
    ]
    assert f"left out: {len(fell)} of {40 + len(fell)} tried" in walker


def test_ablation_groups_keep_protocols_recipes_and_controls_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchmarks import ablation_report

    monkeypatch.setattr(ablation_report, "ARCHIVE", tmp_path)
    configs = {
        "a": {"algo": "diffail", "demo_subsample": 20, "sac_recipe": "reference"},
        "b": {"algo": "sd2ail", "sac_recipe": "expert"},
        "c": {"algo": "sd2ail", "reward": "env", "sac_recipe": "reference", "fixed_length": False},
        "d": {"algo": "sd2ail", "reward": "env", "sac_recipe": "reference"},
    }
    for name, config in configs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    groups = {name: ablation_report.group_of(name, c["algo"]) for name, c in configs.items()}
    assert groups["a"] == "diffail (every 20th pair)"
    assert groups["b"] == "sd2ail (expert recipe)"
    assert groups["c"] != groups["d"] and groups["d"].startswith("sac on the true reward")


def test_each_algorithm_is_compared_with_sd2ail_under_its_own_demo_protocol() -> None:
    from benchmarks.ablation_report import sd2ail_reference

    runs = {
        "sd2ail": 1, "sd2ail (expert recipe)": 3, "diffail (expert recipe)": 3,
        "sd2ail (every 20th pair, expert recipe)": 2, "diffail (every 20th pair, expert recipe)": 2,
        "bc": 3, "bc (every 20th pair)": 2, "gail": 1, "sac on the true reward (expert recipe)": 2,
    }  # fmt: skip
    assert sd2ail_reference("diffail (expert recipe)", runs) == "sd2ail (expert recipe)"
    assert (
        sd2ail_reference("diffail (every 20th pair, expert recipe)", runs)
        == "sd2ail (every 20th pair, expert recipe)"
    )
    # BC has no SAC recipe: SD2AIL of its protocol on the most seeds
    assert sd2ail_reference("bc", runs) == "sd2ail (expert recipe)"
    assert (
        sd2ail_reference("bc (every 20th pair)", runs) == "sd2ail (every 20th pair, expert recipe)"
    )
    assert sd2ail_reference("gail", runs) == "sd2ail"
    assert sd2ail_reference("sd2ail (expert recipe)", runs) is None
    assert sd2ail_reference("sac on the true reward (expert recipe)", runs) is None
    assert sd2ail_reference("gail (every 5th pair)", runs) is None


def test_a_restarted_run_leaves_no_file_of_the_lost_one_in_the_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run lost with its machine and started again: the archive mirrors the new run, so the
    lost run's summary.json (its step count, best return) cannot pass for the new one's."""
    monkeypatch.setattr(runs_csv, "ARCHIVE", tmp_path / "archive")
    lost = write_run(tmp_path, "expert-Z-seed0", 1000, [10.0, 90.0])
    (lost / "summary.json").write_text(json.dumps({"env_steps": 1000, "best_return": 90.0}))
    runs_csv.archive(lost)
    assert (tmp_path / "archive" / lost.name / "summary.json").exists()
    (lost / "summary.json").unlink()  # the new run, part-way, has none yet
    runs_csv.archive(lost)
    assert not (tmp_path / "archive" / lost.name / "summary.json").exists()
    assert (tmp_path / "archive" / lost.name / "metrics.csv").exists()
