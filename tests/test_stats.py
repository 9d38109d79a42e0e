"""The run-comparison statistics: bootstrap intervals and the probability of improvement."""

from __future__ import annotations

import numpy as np
import pytest

from agents.stats import (
    bootstrap_ci,
    first_step_reaching,
    normalized_auc,
    probability_of_improvement,
    probability_of_improvement_ci,
)


def test_bootstrap_interval_covers_the_true_mean_at_its_nominal_rate() -> None:
    rng = np.random.default_rng(0)
    covered = 0
    trials = 300
    for _ in range(trials):
        sample = rng.normal(10.0, 2.0, size=20)
        _, lower, upper = bootstrap_ci(sample, rng, n_boot=2000)
        covered += lower <= 10.0 <= upper
    # the percentile bootstrap undercovers a little at n = 20; 95% nominal
    assert 0.88 <= covered / trials <= 0.98, covered / trials


def test_bootstrap_interval_narrows_with_more_runs() -> None:
    rng = np.random.default_rng(1)
    few = bootstrap_ci(rng.normal(0, 1, 5), rng)
    many = bootstrap_ci(rng.normal(0, 1, 500), rng)
    assert (many[2] - many[1]) < (few[2] - few[1]) / 4
    assert few[1] <= few[0] <= few[2]


def test_probability_of_improvement_counts_pairs_and_splits_ties() -> None:
    assert probability_of_improvement([3, 4], [1, 2]) == 1.0
    assert probability_of_improvement([1, 2], [3, 4]) == 0.0
    assert probability_of_improvement([1, 1], [1, 1]) == 0.5
    # 3 > 2 and 3 > 1; 1 < 2, 1 = 1: (2 + 0 + 0.5) / 4
    assert probability_of_improvement([3, 1], [2, 1]) == pytest.approx(2.5 / 4)
    x, y = [5.0, 1.0, 3.0], [2.0, 4.0]
    assert probability_of_improvement(x, y) + probability_of_improvement(y, x) == 1.0


def test_probability_of_improvement_interval_brackets_the_estimate() -> None:
    rng = np.random.default_rng(2)
    point, lower, upper = probability_of_improvement_ci(
        rng.normal(1, 1, 5), rng.normal(0, 1, 5), rng, n_boot=1000
    )
    assert 0 <= lower <= point <= upper <= 1
    _, lower, _ = probability_of_improvement_ci([10, 11, 12], [0, 1, 2], rng, n_boot=500)
    assert lower == 1.0  # every resample of a clean separation is a clean separation


def test_auc_is_the_curves_mean_and_first_step_the_first_crossing() -> None:
    assert normalized_auc([0, 10], [0, 100]) == pytest.approx(50)
    assert normalized_auc([0, 10, 20], [100, 100, 100]) == pytest.approx(100)
    early = normalized_auc([0, 10, 20], [0, 100, 100])
    late = normalized_auc([0, 10, 20], [0, 0, 100])
    assert early > late
    assert first_step_reaching([1000, 2000, 3000], [-900, -250, -400], -300) == 2000
    assert first_step_reaching([1000, 2000], [-900, -800], -300) == float("inf")
    with pytest.raises(ValueError):
        bootstrap_ci([], np.random.default_rng(0))
