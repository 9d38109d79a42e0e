"""Statistics for comparing training runs over a few seeds, in the style of rliable (Agarwal et
al., 2021): bootstrap confidence intervals of a mean and the probability of improvement, rather
than eyeballed means of 3-5 seeds. Pure numpy; the caller passes the random generator."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    rng: np.random.Generator,
    confidence: float = 0.95,
    n_boot: int = 10_000,
) -> tuple[float, float, float]:
    """(mean, lower, upper): the percentile bootstrap interval of the mean over runs."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"need a non-empty 1-d sample, got shape {x.shape}")
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    lower, upper = np.percentile(means, [tail, 100 - tail])
    return float(x.mean()), float(lower), float(upper)


def probability_of_improvement(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray
) -> float:
    """P(X > Y) + P(X = Y) / 2 for a run X of one algorithm and a run Y of another: the
    Mann-Whitney U statistic over all pairs of runs divided by their number (rliable)."""
    a, b = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if a.ndim != 1 or b.ndim != 1 or len(a) == 0 or len(b) == 0:
        raise ValueError("need two non-empty 1-d samples")
    greater = (a[:, None] > b[None, :]).mean()
    ties = (a[:, None] == b[None, :]).mean()
    return float(greater + ties / 2)


def probability_of_improvement_ci(
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    rng: np.random.Generator,
    confidence: float = 0.95,
    n_boot: int = 5_000,
) -> tuple[float, float, float]:
    """(P(X > Y), lower, upper), each sample resampled separately (stratified bootstrap)."""
    a, b = np.asarray(x, np.float64), np.asarray(y, np.float64)
    point = probability_of_improvement(a, b)
    boots = np.empty(n_boot)
    for i in range(n_boot):
        boots[i] = probability_of_improvement(
            a[rng.integers(0, len(a), len(a))], b[rng.integers(0, len(b), len(b))]
        )
    tail = 100 * (1 - confidence) / 2
    lower, upper = np.percentile(boots, [tail, 100 - tail])
    return point, float(lower), float(upper)


def normalized_auc(
    steps: Sequence[float] | np.ndarray, returns: Sequence[float] | np.ndarray
) -> float:
    """Area under a learning curve (trapezoids over env steps) divided by the steps it spans:
    the curve's mean return, which rewards learning early as well as learning well."""
    s, r = np.asarray(steps, np.float64), np.asarray(returns, np.float64)
    if len(s) != len(r) or len(s) == 0:
        raise ValueError("steps and returns must be equally long and non-empty")
    if len(s) == 1:
        return float(r[0])
    return float(np.sum((r[1:] + r[:-1]) / 2 * np.diff(s)) / (s[-1] - s[0]))


def first_step_reaching(
    steps: Sequence[float] | np.ndarray, returns: Sequence[float] | np.ndarray, threshold: float
) -> float:
    """The first evaluation step whose return reaches `threshold` (inf if none does)."""
    for step, value in zip(np.asarray(steps), np.asarray(returns), strict=True):
        if value >= threshold:
            return float(step)
    return float("inf")
