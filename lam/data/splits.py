"""Deterministic train / validation / test splits.

Two modes, both a pure function of ``(n, sizes, seed)``:

* ``stable=False`` (default): a seeded permutation (``numpy.random.default_rng(seed).permutation(n)``) cut
  into exact sizes. Sizes are exact, but when ``n`` grows the whole assignment changes.
* ``stable=True``: each index ``i`` gets a pseudo-random number ``u_i ∈ [0, 1)`` from a hash of
  ``(seed, i)`` (SplitMix64) and lands in the split whose cumulative-fraction interval contains ``u_i``.
  Appending frames (``n`` grows) never moves an existing frame to another split, so a test set stays
  unseen across dataset versions. Sizes are then binomially distributed around ``fraction · n``
  (standard deviation ``sqrt(n f (1 − f))``), not exact; only fractions are accepted.

:func:`split_groups` does the same over groups (molecules, materials, trajectories) so that correlated
frames never straddle train and test.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lam.data.errors import DataError

__all__ = ["SplitError", "split_groups", "split_indices"]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


class SplitError(DataError):
    """Invalid split request."""


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _uniform_hash(n: int, seed: int) -> np.ndarray:
    """``u_i ∈ [0, 1)`` for i in 0..n-1, a fixed function of (seed, i) independent of n."""
    key = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))[0]
    with np.errstate(over="ignore"):
        h = _splitmix64(np.arange(n, dtype=np.uint64) ^ key)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _sizes(n: int, sizes: Sequence[float] | Sequence[int]) -> tuple[np.ndarray, bool]:
    """Exact counts (largest-remainder rounding for fractions) and whether ``sizes`` were fractions."""
    if len(sizes) == 0:
        raise SplitError("sizes must not be empty", field="sizes")
    arr = np.asarray(sizes)
    if any(isinstance(s, (bool, np.bool_)) for s in sizes):
        raise SplitError(f"sizes must be numbers, got {list(sizes)}", field="sizes")
    if np.any(arr < 0):
        raise SplitError(f"sizes must be non-negative, got {list(sizes)}", field="sizes")
    if all(isinstance(s, (int, np.integer)) for s in sizes):
        counts = arr.astype(np.int64)
        if counts.sum() != n:
            raise SplitError(f"counts {counts.tolist()} sum to {counts.sum()}, expected n={n}", field="sizes")
        return counts, False
    fr = arr.astype(np.float64)
    if not np.isclose(fr.sum(), 1.0, rtol=0, atol=1e-9):
        raise SplitError(f"fractions {fr.tolist()} sum to {fr.sum()}, expected 1", field="sizes")
    raw = fr * n
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts, True


def split_indices(
    n: int,
    sizes: Sequence[float] | Sequence[int] = (0.8, 0.1, 0.1),
    seed: int = 0,
    *,
    stable: bool = False,
) -> tuple[np.ndarray, ...]:
    """Split ``range(n)`` into disjoint, covering, sorted int64 index arrays (one per entry of ``sizes``).

    ``sizes``: fractions summing to 1 (e.g. ``(0.8, 0.1, 0.1)`` → train, val, test) or integer counts summing
    to ``n``. ``stable=True`` selects the hash mode whose assignment does not change when ``n`` grows (see the
    module docstring); it needs fractions.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise SplitError(f"n must be a non-negative integer, got {n!r}", field="n")
    counts, is_fraction = _sizes(int(n), sizes)
    if stable:
        if not is_fraction:
            raise SplitError("stable=True assigns by hash and cannot honour exact counts; pass fractions",
                             field="sizes")
        u = _uniform_hash(int(n), seed)
        edges = np.cumsum(np.asarray(sizes, dtype=np.float64))
        edges[-1] = np.inf
        which = np.searchsorted(edges, u, side="right")
        return tuple(np.flatnonzero(which == k).astype(np.int64) for k in range(len(sizes)))
    perm = np.random.default_rng(seed).permutation(int(n))
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return tuple(np.sort(perm[bounds[k] : bounds[k + 1]]).astype(np.int64) for k in range(len(sizes)))


def split_groups(
    groups: Sequence | np.ndarray,
    sizes: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    *,
    stable: bool = False,
) -> tuple[np.ndarray, ...]:
    """Split frame indices so that all frames sharing a group label land in the same split.

    ``groups[i]`` is the label of frame ``i`` (formula, mp-id, trajectory id …). Groups are ordered by first
    appearance and split with :func:`split_indices` (fractions refer to groups, not frames).
    """
    labels = np.asarray(groups)
    if labels.ndim != 1:
        raise SplitError(f"groups must be one label per frame, got shape {labels.shape}", field="groups")
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # group ids in order of first appearance
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    group_of_frame = rank[inverse.reshape(-1)]
    parts = split_indices(order.size, sizes, seed, stable=stable)
    out = []
    for part in parts:
        mask = np.zeros(order.size, dtype=bool)
        mask[part] = True
        out.append(np.flatnonzero(mask[group_of_frame]).astype(np.int64))
    return tuple(out)
