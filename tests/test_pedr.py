"""PEDR: sampling law, IS weights, trajectory balance, FIFO, sum-tree invariants, checkpoints."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sd2ail_reward.config import PEDRConfig
from sd2ail_reward.expert_replay import ExpertReplay
from sd2ail_reward.pedr import PrioritizedBuffer, PrioritizedSample, SumTree

# Chi-square critical value for 19 degrees of freedom (20 slots) at p = 1e-6:
# scipy.stats.chi2.ppf(1 - 1e-6, 19). A correct sampler fails this once in a million runs.
CHI2_CRIT_DOF19 = 63.677
N_SLOTS = 20


def chi_square(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = counts.sum() * probs
    return float(((counts - expected) ** 2 / expected).sum())


def chi2_sf(x: float, dof: int) -> float:
    """P(X > x) for X ~ chi-square(dof): 1 - P(dof/2, x/2), the regularised lower incomplete
    gamma by its power series (no scipy needed)."""
    a, z = dof / 2, x / 2
    term = total = 1.0 / a
    n = 1
    while term > total * 1e-17:
        term *= z / (a + n)
        total += term
        n += 1
    return 1.0 - math.exp(a * math.log(z) - z - math.lgamma(a)) * total


def priority_probs(alpha: float) -> np.ndarray:
    """Sampling probabilities of the D_SPREAD priorities (the law the buffer must follow)."""
    p = np.minimum(np.abs(1.0 - D_SPREAD) + 0.01, 1.0) ** alpha
    return p / p.sum()


def make_buffer(
    capacity: int = N_SLOTS, dim: int = 2, *, alpha: float = 0.8, beta0: float = 0.6, seed: int = 0
) -> PrioritizedBuffer:
    return PrioritizedBuffer(
        capacity, dim, alpha=alpha, beta0=beta0, rng=np.random.default_rng(seed)
    )


def draw_counts(buf: PrioritizedBuffer, n_calls: int = 100, batch: int = 1000) -> np.ndarray:
    counts = np.zeros(len(buf), dtype=np.int64)
    for _ in range(n_calls):
        counts += np.bincount(buf.sample(batch).indices_B, minlength=len(buf))
    return counts


def assert_state_equal(a: Mapping[str, object], b: Mapping[str, object]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        va, vb = np.asarray(a[key]), np.asarray(b[key])
        assert va.dtype == vb.dtype or va.ndim == 0, key
        np.testing.assert_array_equal(va, vb, err_msg=key)


def assert_sample_equal(a: PrioritizedSample, b: PrioritizedSample) -> None:
    for name in ("x_BD", "indices_B", "weights_B", "source_B"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


# D_train values spread the priorities min(|1 - D| + 0.01, 1) ** alpha over 0.025 .. 1.
D_SPREAD = np.linspace(0.0, 1.3, N_SLOTS)


def test_chi2_threshold_fails_a_correct_sampler_once_in_a_million_runs() -> None:
    """What the frequency test's threshold promises: exact draws from the right law exceed it
    with probability 1e-6 (so the test is not flaky), from the chi-square tail..."""
    for x in (0.5, 3.0, 20.0):  # the tail function itself, against dof 2's closed form
        assert chi2_sf(x, 2) == pytest.approx(math.exp(-x / 2), rel=1e-9)
    assert 0.9e-6 < chi2_sf(CHI2_CRIT_DOF19, N_SLOTS - 1) < 1.1e-6
    # ... which applies: the statistic of 100k exact draws over 20 slots has chi-square(19)'s
    # mean 19 and variance 38, and 20000 such runs never reach the threshold.
    probs = priority_probs(0.8)
    counts = np.random.default_rng(0).multinomial(100_000, probs, size=20_000)
    expected = 100_000 * probs
    stats = ((counts - expected) ** 2 / expected).sum(axis=1)
    assert stats.mean() == pytest.approx(19.0, abs=0.3)
    assert stats.var() == pytest.approx(38.0, abs=4.0)
    assert stats.max() < CHI2_CRIT_DOF19


def test_chi2_threshold_rejects_a_slightly_wrong_sampler() -> None:
    """The same threshold still catches a subtle sampler bug: priorities raised to 0.75 where
    the law says 0.8 (the frequency test below also rejects uniform draws)."""
    buf = make_buffer(alpha=0.75)
    buf.add(np.zeros((N_SLOTS, 2)))
    buf.update_priorities(np.arange(N_SLOTS), D_SPREAD)
    assert chi_square(draw_counts(buf), priority_probs(0.8)) > CHI2_CRIT_DOF19


def test_sampling_frequencies_follow_priorities() -> None:
    alpha = 0.8
    buf = make_buffer(alpha=alpha)
    buf.add(np.zeros((N_SLOTS, 2)))
    buf.update_priorities(np.arange(N_SLOTS), D_SPREAD)
    p = np.minimum(np.abs(1.0 - D_SPREAD) + 0.01, 1.0) ** alpha
    np.testing.assert_allclose(buf.priorities(), p, rtol=1e-12)
    probs = p / p.sum()

    counts = draw_counts(buf)  # 100k draws
    assert counts.sum() == 100_000
    assert chi_square(counts, probs) < CHI2_CRIT_DOF19

    # The test has power: uniform draws on the same priorities are rejected.
    uniform = np.bincount(np.random.default_rng(1).integers(0, N_SLOTS, 100_000))
    assert chi_square(uniform, probs) > CHI2_CRIT_DOF19


def test_is_weights_match_formula() -> None:
    capacity, beta0 = 50, 0.4
    buf = make_buffer(capacity, alpha=0.6, beta0=beta0)
    buf.add(np.arange(20, dtype=np.float32).reshape(10, 2))  # size 10 < capacity 50
    d = np.random.default_rng(2).uniform(0.0, 1.0, 10)
    buf.update_priorities(np.arange(10), d)

    sample = buf.sample(64)
    beta = beta0 + 1e-3  # annealed before drawing
    assert buf.beta == pytest.approx(beta)
    priorities = np.minimum(np.abs(1.0 - d) + 0.01, 1.0) ** 0.6
    prob = priorities[sample.indices_B] / priorities.sum()
    w = (capacity * prob) ** (-beta)  # N = capacity, as the reference
    expected = w / w.max()
    assert sample.weights_B.dtype == np.float32
    np.testing.assert_allclose(sample.weights_B, expected, rtol=1e-6)
    assert sample.weights_B.max() == 1.0
    np.testing.assert_array_equal(sample.x_BD[:, 0], 2 * sample.indices_B)

    for _ in range(1000):
        buf.sample(1)
    assert buf.beta == 1.0


def test_every_trajectory_sampled_evenly() -> None:
    rng = np.random.default_rng(3)
    trajs = [rng.normal(size=(n, 3)).astype(np.float32) for n in (5, 7, 11)]
    replay = ExpertReplay(
        trajs, config=PEDRConfig(expert_capacity=4), pseudo_dim=3, rng=np.random.default_rng(4)
    )
    assert replay.n_trajectories == 3
    assert replay.expert_size == 23

    for _ in range(20):
        sample = replay.sample_expert(32)
        np.testing.assert_array_equal(np.bincount(sample.source_B), [10, 10, 10])
        for i, traj in enumerate(trajs):
            rows = sample.source_B == i
            np.testing.assert_array_equal(sample.x_BD[rows], traj[sample.indices_B[rows]])
            assert sample.weights_B[rows].max() == 1.0  # normalised per trajectory buffer
        # Skewed priorities (trajectory 0 looks fake) must not unbalance the sources.
        replay.update_expert(sample, np.where(sample.source_B == 0, 0.0, 0.99))
    assert replay.sample_expert(2).source_B.tolist() == [0, 1, 2]  # at least one each


def test_pseudo_buffer_is_fifo_with_new_rows_at_max_priority() -> None:
    buf = make_buffer(capacity=5, dim=1)
    np.testing.assert_array_equal(buf.add(np.arange(3.0)[:, None]), [0, 1, 2])
    buf.update_priorities(np.arange(3), np.ones(3))  # perfectly classified: lowest priority
    low = 0.01**0.8
    np.testing.assert_array_equal(buf.add(np.arange(3.0, 7.0)[:, None]), [3, 4, 0, 1])

    sd = buf.state_dict()
    assert len(buf) == 5
    np.testing.assert_array_equal(
        np.asarray(sd["x"])[:, 0], [5, 6, 2, 3, 4]
    )  # rows 0 and 1 evicted first
    np.testing.assert_allclose(buf.priorities(), [1, 1, low, 1, 1])

    # 1.0 is the largest priority any D can produce, so new rows always rank first.
    buf.update_priorities(np.arange(5), np.array([-5.0, 0.0, 0.5, 2.0, 1.0]))
    assert buf.priorities().max() == 1.0

    buf.add(np.arange(10.0, 17.0)[:, None])  # more rows than slots: the newest 5 survive
    assert sorted(np.asarray(buf.state_dict()["x"])[:, 0].tolist()) == [12, 13, 14, 15, 16]
    np.testing.assert_array_equal(buf.priorities(), np.ones(5))

    replay = ExpertReplay(
        [np.zeros((3, 1))],
        config=PEDRConfig(pseudo_capacity=4),
        pseudo_dim=1,
        rng=np.random.default_rng(0),
    )
    replay.add_pseudo(np.ones((6, 1)))
    assert replay.pseudo_size == 4


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(1, 40),
    updates=st.lists(
        st.lists(st.tuples(st.integers(0, 39), st.floats(0.0, 1e3)), max_size=12),
        min_size=1,
        max_size=6,
    ),
    fractions=st.lists(st.floats(0.0, 1.0), max_size=8),
)
def test_sum_tree_invariants(
    capacity: int, updates: list[list[tuple[int, float]]], fractions: list[float]
) -> None:
    tree = SumTree(capacity)
    reference = np.zeros(capacity)
    for batch in updates:
        batch = [(i % capacity, p) for i, p in batch]
        for i, p in batch:  # a loop: the last write to an index wins
            reference[i] = p
        idx = np.array([i for i, _ in batch], dtype=np.int64)
        tree.update(idx, np.array([p for _, p in batch]))
        np.testing.assert_array_equal(tree.leaves, reference)
        assert tree.total == pytest.approx(reference.sum(), rel=1e-12, abs=1e-12)

    if tree.total == 0.0:
        with pytest.raises(ValueError, match="total priority"):
            tree.find([0.0])
        return
    total = tree.total
    values = np.array([0.0, total, np.nextafter(total, 0.0), 2 * total, -1.0])
    values = np.concatenate([values, np.array(fractions) * total])
    leaves = tree.find(values)
    assert (reference[leaves] > 0).all()  # never an empty leaf
    cum = np.cumsum(reference)
    inner = values[5:]
    tol = 1e-9 * total
    lo = cum[leaves[5:]] - reference[leaves[5:]]
    assert ((lo - tol <= inner) & (inner <= cum[leaves[5:]] + tol)).all()


def test_sum_tree_round_off_never_reaches_empty_leaf() -> None:
    # Found by search: with these leaves, a naive descent of nextafter(total, 0) subtracts the left
    # sum, still exceeds the right subtree's only filled leaf through round-off, and ends on the
    # empty leaf 3 (the reference's `get_leaf` bug).
    tree = SumTree(4)
    tree.update(np.arange(3), [55.45966738808921, 0.00013907565154644752, 65.01504322042086])
    near_total = np.nextafter(tree.total, 0.0)
    right = near_total - (55.45966738808921 + 0.00013907565154644752)
    assert right >= 65.01504322042086  # the round-off the guard exists for
    np.testing.assert_array_equal(tree.find([near_total, tree.total, 1e300]), [2, 2, 2])

    buf = make_buffer(capacity=8)  # 3 filled slots, 5 empty ones
    buf.add(np.ones((3, 2)))
    buf.update_priorities(np.arange(3), np.array([0.0, 0.5, 0.9]))
    for _ in range(20):
        sample = buf.sample(257)
        assert sample.indices_B.max() < 3
        assert np.isfinite(sample.weights_B).all()


def test_uniform_mode_has_unit_weights_and_uniform_frequencies() -> None:
    traj = np.arange(2.0 * N_SLOTS).reshape(N_SLOTS, 2)
    replay = ExpertReplay(
        [traj],
        config=PEDRConfig(prioritized=False),
        pseudo_dim=2,
        rng=np.random.default_rng(5),
    )
    counts = np.zeros(N_SLOTS, dtype=np.int64)
    d_rng = np.random.default_rng(6)
    for _ in range(100):
        sample = replay.sample_expert(1000)
        np.testing.assert_array_equal(sample.weights_B, np.ones(1000, dtype=np.float32))
        replay.update_expert(sample, d_rng.uniform(0.0, 1.0, 1000))  # a no-op here
        counts += np.bincount(sample.indices_B, minlength=N_SLOTS)
    assert chi_square(counts, np.full(N_SLOTS, 1.0 / N_SLOTS)) < CHI2_CRIT_DOF19
    summary = replay.priority_summary()
    assert summary["expert_priority_min"] == summary["expert_priority_max"] == 1.0

    replay.add_pseudo(np.zeros((5, 2)))
    pseudo = replay.sample_pseudo(16)
    replay.update_pseudo(pseudo, np.zeros(16))
    np.testing.assert_array_equal(pseudo.weights_B, np.ones(16, dtype=np.float32))
    assert replay.priority_summary()["pseudo_priority_mean"] == 1.0

    buf = make_buffer(alpha=0.0)  # alpha = 0 alone also means uniform
    buf.add(np.zeros((N_SLOTS, 2)))
    buf.update_priorities(np.arange(N_SLOTS), D_SPREAD)
    np.testing.assert_array_equal(buf.priorities(), np.ones(N_SLOTS))
    assert (buf.sample(64).weights_B == 1.0).all()


def run_steps(replay: ExpertReplay, n: int, seed: int) -> list[PrioritizedSample]:
    d_rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        expert = replay.sample_expert(8)
        replay.update_expert(expert, d_rng.uniform(size=8))
        pseudo = replay.sample_pseudo(24)
        replay.update_pseudo(pseudo, d_rng.uniform(size=24))
        replay.add_pseudo(d_rng.normal(size=(3, 4)))
        out += [expert, pseudo]
    return out


def test_state_dict_round_trip_resumes_identically() -> None:
    data_rng = np.random.default_rng(7)
    trajs = [data_rng.normal(size=(n, 4)) for n in (9, 12)]
    config = PEDRConfig(expert_capacity=10, pseudo_capacity=16, beta0=0.4)
    replay = ExpertReplay(trajs, config=config, pseudo_dim=4, rng=np.random.default_rng(8))
    replay.add_pseudo(data_rng.normal(size=(5, 4)))
    run_steps(replay, 4, seed=9)

    sd = replay.state_dict()
    for key, value in sd.items():
        assert isinstance(value, np.ndarray | int | float | str), key
        assert not isinstance(value, np.ndarray) or value.dtype != object, key
    # Checkpointable without pickle.
    raw = io.BytesIO()
    arrays: dict[str, Any] = dict(sd)
    np.savez(raw, **arrays)
    raw.seek(0)
    with np.load(raw, allow_pickle=False) as npz:
        loaded = {k: npz[k] for k in npz.files}

    expected = run_steps(replay, 6, seed=10)  # the original carries on
    restored = ExpertReplay(trajs, config=config, pseudo_dim=4, rng=np.random.default_rng(99))
    restored.load_state_dict(loaded)
    got = run_steps(restored, 6, seed=10)
    for a, b in zip(expected, got, strict=True):
        assert_sample_equal(a, b)
    assert_state_equal(replay.state_dict(), restored.state_dict())
    assert replay.priority_summary() == restored.priority_summary()

    buf = make_buffer(seed=11)  # a lone buffer carries its generator state itself
    buf.add(np.ones((7, 2)))
    buf.sample(4)
    buf_sd = buf.state_dict()
    other = make_buffer(seed=12)
    other.load_state_dict(buf_sd)
    assert_sample_equal(buf.sample(9), other.sample(9))


def test_bad_input_raises_and_leaves_state_unchanged() -> None:
    buf = make_buffer(capacity=8)
    buf.add(np.ones((4, 2)))
    before = buf.state_dict()
    bad_calls = [
        (lambda: buf.add(np.ones((3, 3))), r"shape \(N, 2\), got \(3, 3\)"),
        (lambda: buf.add(np.ones(2)), r"shape \(N, 2\), got \(2,\)"),
        (lambda: buf.add(np.array([[1.0, np.nan], [0.0, 0.0]])), "NaN/Inf"),
        (lambda: buf.add(np.array([[0.0, 0.0], [np.inf, 0.0]])), "first at row 1"),
        (lambda: buf.add(np.array([[1e39, 0.0]])), "float32 range"),
        (lambda: buf.update_priorities(np.array([0, 4]), np.ones(2)), r"\[0, 4\), got"),
        (lambda: buf.update_priorities(np.array([-1]), np.ones(1)), r"\[0, 4\), got"),
        (lambda: buf.update_priorities(np.array([0.0]), np.ones(1)), "integers"),
        (lambda: buf.update_priorities(np.array([0, 1]), np.ones(3)), r"\(2,\), got \(3,\)"),
        (lambda: buf.update_priorities(np.array([0]), np.array([np.nan])), "finite"),
        (lambda: buf.sample(0), "batch_size must be >= 1, got 0"),
        (lambda: buf.load_state_dict({**before, "priorities": -np.ones(4)}), ">= 0"),
        (lambda: buf.load_state_dict({**before, "dim": 3}), "does not match"),
        (lambda: buf.load_state_dict({**before, "rng_state": "{}"}), "rng_state"),
        (lambda: buf.load_state_dict({k: v for k, v in before.items() if k != "x"}), "lacks"),
    ]
    for call, match in bad_calls:
        with pytest.raises(ValueError, match=match):
            call()
        assert_state_equal(buf.state_dict(), before)

    with pytest.raises(ValueError, match="empty buffer"):
        make_buffer().sample(4)

    replay = ExpertReplay(
        [np.zeros((3, 2)), np.ones((4, 2))],
        config=PEDRConfig(),
        pseudo_dim=2,
        rng=np.random.default_rng(0),
    )
    with pytest.raises(ValueError, match="pseudo-expert buffer is empty"):
        replay.sample_pseudo(8)
    sample = replay.sample_expert(4)
    replay_before = replay.state_dict()
    wrong_source = PrioritizedSample(
        sample.x_BD, sample.indices_B, sample.weights_B, np.array([0, 0, 1, 2])
    )
    bad_replay_calls = [
        (lambda: replay.update_expert(wrong_source, np.zeros(4)), r"\[0, 2\), got"),
        # Trajectory 0 has 3 rows: a valid update of trajectory 1 must not be applied either.
        (
            lambda: replay.update_expert(
                PrioritizedSample(
                    sample.x_BD, np.array([3, 0, 3, 0]), sample.weights_B, sample.source_B
                ),
                np.zeros(4),
            ),
            r"\[0, 3\), got",
        ),
        (lambda: replay.update_expert(sample, np.zeros(5)), r"\(4,\), got \(5,\)"),
        (lambda: replay.add_pseudo(np.zeros((2, 5))), r"\(N, 2\), got \(2, 5\)"),
        (lambda: replay.load_state_dict({**replay_before, "n_trajectories": 3}), "3 trajectory"),
        (
            lambda: replay.load_state_dict({**replay_before, "pseudo.size": 1}),
            "inconsistent|shape",
        ),
    ]
    for call, match in bad_replay_calls:
        with pytest.raises(ValueError, match=match):
            call()
        assert_state_equal(replay.state_dict(), replay_before)

    with pytest.raises(ValueError, match=r"\(N, 2\), got \(3, 4\)"):
        ExpertReplay(
            [np.zeros((3, 4))], config=PEDRConfig(), pseudo_dim=2, rng=np.random.default_rng()
        )
    with pytest.raises(ValueError, match="at least one"):
        ExpertReplay([], config=PEDRConfig(), pseudo_dim=2, rng=np.random.default_rng())


def test_priority_summary_reports_floats() -> None:
    replay = ExpertReplay(
        [np.zeros((4, 2))], config=PEDRConfig(beta0=0.6), pseudo_dim=2, rng=np.random.default_rng(0)
    )
    sample = replay.sample_expert(4)
    replay.update_expert(sample, np.ones(4))
    summary = replay.priority_summary()
    assert all(isinstance(v, float) for v in summary.values())
    assert summary["expert_priority_min"] == pytest.approx(0.01**0.8)
    assert summary["expert_priority_max"] <= 1.0
    assert summary["expert_beta"] == pytest.approx(0.601)
    assert summary["pseudo_size"] == 0.0


# ------------------------------------------------------------------------------------------
# The vectorised sum tree (issue 15) against plain loops, bitwise
# ------------------------------------------------------------------------------------------


def rebuilt_from_leaves(tree: SumTree) -> np.ndarray:
    """Every parent recomputed bottom-up from the leaves, one node at a time: what the tree
    must hold after any sequence of updates (parents are never patched by deltas)."""
    nodes = tree._tree.copy()
    for k in range(tree._n_leaves - 1, 0, -1):
        nodes[k] = nodes[2 * k] + nodes[2 * k + 1]
    return nodes


def descend_one(tree: SumTree, value: float) -> int:
    """The guarded descent for one value, as a scalar loop (`find` does all values at once)."""
    nodes, n_leaves = tree._tree, tree._n_leaves
    v = min(max(value, 0.0), float(np.nextafter(tree.total, 0.0)))
    node = 1
    while node < n_leaves:
        left = 2 * node
        if v >= nodes[left] and nodes[left + 1] > 0.0:
            v -= nodes[left]
            node = left + 1
        else:
            node = left
    return node - n_leaves


@pytest.mark.parametrize("capacity", [1, 2, 7, 1000, 100_000])
def test_sum_tree_matches_loops_bitwise(capacity: int) -> None:
    """Batched updates (repeated indices, zeros, a batch larger than the tree) leave the nodes
    bitwise equal to a node-by-node rebuild, and batched draws land on the leaves a scalar
    descent finds."""
    rng = np.random.default_rng(capacity)
    tree = SumTree(capacity)
    for step in range(25):
        n = int(rng.integers(1, 2 * capacity + 2)) if capacity < 10 else int(rng.integers(1, 3000))
        idx = rng.integers(0, capacity, n)
        p = rng.uniform(0.0, 1.0, n) ** 3 * (rng.random(n) > 0.1)  # some exact zeros
        if step == 0:
            p[0] = 1.0  # the total is never 0 below
        tree.update(idx, p)
        np.testing.assert_array_equal(tree._tree, rebuilt_from_leaves(tree))
        if tree.total > 0.0:
            values = np.concatenate(
                [rng.uniform(0.0, tree.total, 200), [0.0, tree.total, np.nextafter(tree.total, 0)]]
            )
            expected = [descend_one(tree, float(v)) for v in values]
            np.testing.assert_array_equal(tree.find(values), expected)
