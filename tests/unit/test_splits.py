"""Deterministic splits (lam.data.splits)."""

from __future__ import annotations

import numpy as np
import pytest

from lam.data.splits import SplitError, split_groups, split_indices


def _check_partition(parts: tuple[np.ndarray, ...], n: int) -> None:
    allidx = np.concatenate(parts)
    assert allidx.size == n
    assert np.array_equal(np.sort(allidx), np.arange(n))  # disjoint and covering
    for p in parts:
        assert p.dtype == np.int64 and np.all(np.diff(p) > 0)  # sorted


@pytest.mark.parametrize("n", [0, 1, 7, 10, 1001])
def test_fractions_exact_sizes_and_partition(n: int) -> None:
    train, val, test = split_indices(n, (0.8, 0.1, 0.1), seed=3)
    _check_partition((train, val, test), n)
    expected = np.array([0.8, 0.1, 0.1]) * n
    for part, e in zip((train, val, test), expected):
        assert abs(part.size - e) < 1  # largest-remainder rounding
    assert train.size + val.size + test.size == n


def test_counts_and_determinism() -> None:
    a = split_indices(100, (70, 20, 10), seed=42)
    b = split_indices(100, (70, 20, 10), seed=42)
    c = split_indices(100, (70, 20, 10), seed=43)
    assert [p.size for p in a] == [70, 20, 10]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[2], c[2])
    _check_partition(a, 100)
    # same as a seeded numpy permutation (documented behaviour)
    perm = np.random.default_rng(42).permutation(100)
    assert np.array_equal(a[0], np.sort(perm[:70]))


def test_stable_mode_survives_growth() -> None:
    small = split_indices(1000, (0.8, 0.1, 0.1), seed=5, stable=True)
    big = split_indices(5000, (0.8, 0.1, 0.1), seed=5, stable=True)
    _check_partition(small, 1000)
    _check_partition(big, 5000)
    for s, b in zip(small, big):
        assert np.array_equal(s, b[b < 1000])  # no old frame changes split
    sizes = np.array([p.size for p in big])
    sd = np.sqrt(5000 * 0.1 * 0.9)
    assert abs(sizes[1] - 500) < 5 * sd and abs(sizes[2] - 500) < 5 * sd
    other_seed = split_indices(1000, (0.8, 0.1, 0.1), seed=6, stable=True)
    assert not np.array_equal(small[2], other_seed[2])
    # the default mode is NOT stable under growth (documented)
    p1 = split_indices(1000, (0.8, 0.1, 0.1), seed=5)[2]
    p2 = split_indices(1001, (0.8, 0.1, 0.1), seed=5)[2]
    assert not np.array_equal(p1, p2[p2 < 1000])


def test_groups_never_straddle() -> None:
    rng = np.random.default_rng(0)
    groups = rng.choice([f"mol{i}" for i in range(40)], size=600)
    parts = split_groups(groups, (0.5, 0.25, 0.25), seed=1)
    _check_partition(parts, 600)
    sets = [set(groups[p]) for p in parts]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert [len(s) for s in sets] == [20, 10, 10]


def test_bad_input_is_clear() -> None:
    with pytest.raises(SplitError, match="sum to 0.9"):
        split_indices(10, (0.8, 0.1))
    with pytest.raises(SplitError, match=r"sum to 9, expected n=10"):
        split_indices(10, (5, 4))
    with pytest.raises(SplitError, match="non-negative"):
        split_indices(10, (1.2, -0.2))
    with pytest.raises(SplitError, match="exact counts"):
        split_indices(10, (8, 1, 1), stable=True)
    with pytest.raises(SplitError, match="field 'n'"):
        split_indices(-1)
