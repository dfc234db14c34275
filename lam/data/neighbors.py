"""Neighbour lists on top of vesin (O(N) cell lists), for any mix of periodic directions.

One vesin call at the largest cutoff serves every requested cutoff: the smaller lists are distance masks of
the largest one, so a model that needs 6 Å and 4 Å lists (DPA-2) pays for a single search.

Conventions (see :mod:`lam.data.keys`): ``edge_index[0]`` is the centre ``i``, ``edge_index[1]`` the
neighbour ``j``, the edge vector is ``r_ij = pos[j] - pos[i] + shifts @ cell`` and edges are sorted by
``(i, j, shift)``. Self pairs with a zero shift are excluded; periodic images of an atom itself (non-zero
shift, for cells smaller than the cutoff) are kept. Along a non-periodic direction the shift is always zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import vesin

__all__ = ["NeighborList", "neighbor_list", "neighbor_lists"]

# A cell whose smallest singular value is below this fraction of its largest one is treated as degenerate.
_DEGENERATE_RTOL = 1e-9


class NeighborList(NamedTuple):
    """Edges of one structure within one cutoff."""

    edge_index: np.ndarray
    """(2, E) int64; row 0 is the centre ``i``, row 1 the neighbour ``j``; sorted by ``i``, then ``j``."""
    shifts: np.ndarray
    """(E, 3) int64 integer cell shifts: ``r_ij = pos[j] - pos[i] + shifts @ cell``."""
    distances: np.ndarray
    """(E,) float64 ``|r_ij|``."""


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


def _check_inputs(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray | bool | Sequence[bool], where: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = _prefix(where)
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ValueError(f"{p}field 'positions' must have shape (N, 3), got {pos.shape}")
    if not np.all(np.isfinite(pos)):
        bad = int(np.argwhere(~np.isfinite(pos))[0, 0])
        raise ValueError(f"{p}field 'positions' has a non-finite value (first at atom {bad})")
    box = np.asarray(cell, dtype=np.float64)
    if box.size != 9:
        raise ValueError(f"{p}field 'cell' must be a (3, 3) matrix, got shape {box.shape}")
    box = box.reshape(3, 3)
    if not np.all(np.isfinite(box)):
        raise ValueError(f"{p}field 'cell' has a non-finite value: {box.tolist()}")
    periodic = np.asarray(pbc)
    if periodic.dtype != np.bool_ and not np.all((periodic == 0) | (periodic == 1)):
        raise ValueError(f"{p}field 'pbc' must be booleans, got {periodic.tolist()}")
    try:
        periodic = np.broadcast_to(periodic.astype(bool), (3,)).copy()
    except ValueError:
        raise ValueError(f"{p}field 'pbc' must be one or three booleans, got {periodic.tolist()}") from None
    return pos, box, periodic


def _vesin_box(box: np.ndarray, periodic: np.ndarray, where: str) -> np.ndarray:
    """The box handed to vesin: the real cell along periodic directions, an orthonormal completion elsewhere.

    Rows of non-periodic directions never enter an edge vector (their shifts are zero), so any vectors that
    complete the periodic rows to a basis are valid; a completion avoids degenerate boxes (a zero third row of
    a slab, for instance) that vesin would reject or crash on.
    """
    n_periodic = int(periodic.sum())
    if n_periodic == 0:
        return np.zeros((3, 3))
    rows = box[periodic]
    sv = np.linalg.svd(rows, compute_uv=False)
    if sv.min() <= _DEGENERATE_RTOL * max(sv.max(), 1e-300):
        raise ValueError(
            f"{_prefix(where)}field 'cell' is degenerate along its periodic directions "
            f"(pbc={periodic.tolist()}, cell={box.tolist()}); periodic lattice vectors must be non-zero "
            "and linearly independent"
        )
    if n_periodic == 3:
        return box.copy()
    _, _, vt = np.linalg.svd(rows, full_matrices=True)
    completed = box.copy()
    completed[~periodic] = vt[n_periodic:]
    return completed


def _as_int64(x: np.ndarray) -> np.ndarray:
    """vesin's indices are uint64 (< 2^63 in practice): reinterpret them without a copy."""
    return x.view(np.int64) if x.dtype == np.uint64 else x.astype(np.int64)


def _sorted_edges(
    i: np.ndarray, j: np.ndarray, shifts: np.ndarray, distances: np.ndarray, n_atoms: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(edge_index, shifts, distances)`` sorted by ``(i, j, shift)``: a total order, hence deterministic.

    Fast path: ``(i, j, shift)`` is encoded as one mixed-radix integer, the edge's position is packed into its
    low bits and the packed integers are sorted by value (``np.sort`` is several times faster than
    ``np.argsort`` and touches memory sequentially); ``i``, ``j`` and the shift are then decoded from the
    sorted keys and only the distances are gathered. Systems too large for 64-bit packing use ``lexsort``.
    All returned arrays are new (none is a view of the inputs).
    """
    n_edges = len(i)
    i, j = _as_int64(i), _as_int64(j)
    if n_edges == 0:
        return np.zeros((2, 0), np.int64), np.zeros((0, 3), np.int64), np.zeros(0, np.float64)
    # one base for all three axes: a reduction over the flat array is much cheaper than per-column ones
    lo = int(shifts.min())
    base = int(shifts.max()) - lo + 1
    n_codes = base**3
    key_bits = (n_atoms * n_atoms * n_codes - 1).bit_length()
    idx_bits = (n_edges - 1).bit_length()
    if key_bits + idx_bits > 64:
        order = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], j, i))
        return np.stack([i[order], j[order]]), shifts[order].astype(np.int64), distances[order]

    key = i * n_atoms
    key += j
    key *= n_codes
    s = shifts.astype(np.int64)
    s -= lo
    key += (s[:, 0] * base + s[:, 1]) * base + s[:, 2]
    del s
    packed = key.view(np.uint64)
    packed <<= np.uint64(idx_bits)
    packed |= np.arange(n_edges, dtype=np.uint64)
    packed.sort()
    order = (packed & np.uint64((1 << idx_bits) - 1)).view(np.int64)
    sorted_distances = distances[order]
    del order
    packed >>= np.uint64(idx_bits)
    code = key % n_codes
    key //= n_codes
    edge_index = np.empty((2, n_edges), dtype=np.int64)
    np.floor_divide(key, n_atoms, out=edge_index[0])
    np.multiply(edge_index[0], n_atoms, out=edge_index[1])
    np.subtract(key, edge_index[1], out=edge_index[1])
    del key, packed
    s_sorted = np.empty((n_edges, 3), dtype=np.int64)
    s_sorted[:, 2] = code % base
    code //= base
    s_sorted[:, 1] = code % base
    s_sorted[:, 0] = code // base
    s_sorted += lo
    return edge_index, s_sorted, sorted_distances


def neighbor_lists(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray | bool | Sequence[bool],
    cutoffs: Sequence[float],
    *,
    n_threads: int = 1,
    where: str = "",
) -> list[NeighborList]:
    """Full neighbour lists (both ``i→j`` and ``j→i``) for several cutoffs from a single vesin search.

    Args:
        positions: (N, 3) Cartesian positions in Å (need not be wrapped into the cell).
        cell: (3, 3) row lattice vectors; ignored along non-periodic directions (may be zeros there).
        pbc: one or three booleans; any mix (e.g. a slab ``[True, True, False]``) is supported.
        cutoffs: one or more positive cutoffs in Å; pairs with ``distance < cutoff`` are kept.
        n_threads: vesin threads (1 by default: data loading already runs one process per core;
            0 means ``OMP_NUM_THREADS`` or all cores).
        where: context for error messages, e.g. ``"water.h5 frame 12"``.

    Returns:
        One :class:`NeighborList` per cutoff, in the order given. Each smaller list is the subset of the
        largest one with ``distance < cutoff``, in the same (sorted) order.

    Raises:
        ValueError: on malformed or non-finite positions / cell, non-positive cutoffs, or a periodic cell
            that is degenerate along its periodic directions.
    """
    pos, box, periodic = _check_inputs(positions, cell, pbc, where)
    rcs = [float(c) for c in np.atleast_1d(np.asarray(cutoffs, dtype=np.float64))]
    if not rcs or not all(np.isfinite(c) and c > 0 for c in rcs):
        raise ValueError(f"{_prefix(where)}cutoffs must be one or more positive finite numbers, got {cutoffs}")
    vbox = _vesin_box(box, periodic, where)
    n_atoms = pos.shape[0]
    rc_max = max(rcs)

    if n_atoms == 0:
        edge_index = np.zeros((2, 0), dtype=np.int64)
        s = np.zeros((0, 3), dtype=np.int64)
        d = np.zeros(0, dtype=np.float64)
    else:
        calculator = vesin.NeighborList(cutoff=rc_max, full_list=True, n_threads=n_threads)
        i, j, s, d = calculator.compute(pos, vbox, periodic, quantities="ijSd", copy=False)
        # the sorted arrays are fresh copies, so vesin's buffers may be freed with `calculator`
        edge_index, s, d = _sorted_edges(i, j, s, d, n_atoms)
        del i, j, calculator
        if not periodic.all() and np.any(s[:, ~periodic]):  # vesin must never shift along an open direction
            raise RuntimeError(f"{_prefix(where)}vesin returned a shift along a non-periodic direction")

    full = NeighborList(edge_index=edge_index, shifts=s, distances=d)
    out = []
    for rc in rcs:
        if rc == rc_max:
            out.append(full)
        else:
            keep = d < rc
            out.append(NeighborList(edge_index=edge_index[:, keep], shifts=s[keep], distances=d[keep]))
    return out


def neighbor_list(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray | bool | Sequence[bool],
    cutoff: float,
    *,
    n_threads: int = 1,
    where: str = "",
) -> NeighborList:
    """Full neighbour list within one cutoff; see :func:`neighbor_lists` for conventions and errors."""
    return neighbor_lists(positions, cell, pbc, [cutoff], n_threads=n_threads, where=where)[0]
