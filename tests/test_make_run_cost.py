"""`benchmarks/make_run_cost.py`'s per-step rate, side by side and alone."""

from __future__ import annotations

import pytest

from benchmarks.make_run_cost import (
    add_alone_columns,
    add_overlap_columns,
    overlap_ms_per_step,
    step_times,
)

BASELINE = """23:59:50 starting reward server
23:59:58 step 6000 eval 939
00:00:48 step 7000 eval 939
00:01:38 step 8000 eval 84
00:01:50 step 9000 eval 84
"""
CANDIDATE = """23:59:40 starting reward server
23:59:50 step 6000 eval 17
00:00:40 step 8000 eval 17
00:01:30 step 10000 eval 27
"""


def test_progress_lines_are_read_across_midnight() -> None:
    assert step_times(BASELINE) == [
        (86_398.0, 6000), (86_448.0, 7000), (86_498.0, 8000), (86_510.0, 9000)
    ]  # fmt: skip


def test_the_rate_counts_only_the_time_both_ran() -> None:
    # the candidate's last line is at 00:01:30: the baseline's 9000 (alone, faster) is left out
    rows: list[dict[str, object]] = [{"label": "baseline"}, {"label": "candidate"}]
    add_overlap_columns(rows, [BASELINE, CANDIDATE], from_step=6000)
    assert rows[0]["overlap_ms_per_step"] == pytest.approx(50.0)
    assert rows[1]["overlap_ms_per_step"] == pytest.approx(25.0)
    assert rows[0]["overlap_baseline_over_candidate"] == pytest.approx(2.0)
    assert overlap_ms_per_step(BASELINE, from_step=9000, until_s=1e9) is None
    short: list[dict[str, object]] = [{"label": "baseline"}, {"label": "candidate"}]
    add_overlap_columns(short, [BASELINE, "23:59:40 starting reward server\n"], from_step=6000)
    assert [row["overlap_ms_per_step"] for row in short] == ["", ""]


def test_a_run_alone_is_rated_to_its_own_last_line() -> None:
    # one after the other: the baseline's 9000 counts (nothing ran beside it)
    rows: list[dict[str, object]] = [{"label": "baseline"}, {"label": "candidate"}]
    add_alone_columns(rows, [BASELINE, CANDIDATE], from_step=6000)
    assert rows[0]["alone_ms_per_step"] == pytest.approx(112.0 / 3, abs=0.01)
    assert rows[1]["alone_ms_per_step"] == pytest.approx(25.0)
    assert rows[0]["alone_baseline_over_candidate"] == pytest.approx(112.0 / 75, abs=1e-3)
