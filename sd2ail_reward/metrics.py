"""Pure-numpy diagnostics shared by the learner, the agents and the tests."""

from __future__ import annotations

import numpy as np


def frechet_distance(a_ND: np.ndarray, b_MD: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two sample sets.

    ||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2), with the matrix square
    roots taken through symmetric eigendecompositions (no scipy needed). NaN if either set has
    fewer than two rows.
    """
    if a_ND.shape[0] < 2 or b_MD.shape[0] < 2:
        return float("nan")
    a, b = a_ND.astype(np.float64), b_MD.astype(np.float64)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    eig_a, vec_a = np.linalg.eigh(cov_a)
    sqrt_a = (vec_a * np.sqrt(np.clip(eig_a, 0, None))) @ vec_a.T
    middle = sqrt_a @ cov_b @ sqrt_a
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    mean_term = float(((a.mean(0) - b.mean(0)) ** 2).sum())
    return mean_term + float(np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_sqrt)


def pearson(x_N: np.ndarray, y_N: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant or there are < 2 points."""
    x, y = np.asarray(x_N, np.float64), np.asarray(y_N, np.float64)
    if x.shape[0] < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def episode_sums(values_N: np.ndarray, done_N: np.ndarray) -> np.ndarray:
    """Per-episode sums of `values` over the complete episodes of one env's transitions in
    order (an episode ends at a `done` row; rows after the last one, an episode still going,
    are left out)."""
    values, done = np.asarray(values_N, np.float64), np.asarray(done_N, bool)
    if values.shape != done.shape or values.ndim != 1:
        raise ValueError(f"need two equal 1-D arrays, got {values.shape} and {done.shape}")
    ends = np.flatnonzero(done) + 1
    if ends.size == 0:
        return np.zeros(0)
    return np.add.reduceat(values[: ends[-1]], np.concatenate([[0], ends[:-1]]))
