"""Neighbour lists on top of vesin (O(N) cell lists), for any mix of periodic directions.

One vesin call at the largest cutoff serves every requested cutoff: the smaller lists are distance masks of
the largest one, so a model that needs 6 Å and 4 Å lists (DPA-2) pays for a single search.

Conventions (see :mod:`lam.data.keys`): ``edge_index[0]`` is the centre ``i``, ``edge_index[1]`` the
neighbour ``j``, the edge vector is ``r_ij = pos[j] - pos[i] + shifts @ cell`` and edges are sorted by
``(i, j, shift)``. Self pairs with a zero shift are excluded; periodic images of an atom itself (non-zero
shift, for cells smaller than the cutoff) are kept. Along a non-periodic direction the shift is always zero.

vesin is never handed a geometry it handles badly: atoms far apart along an open direction (a molecule
leaving a slab) or a periodic cell with a huge vacuum are remapped first (see :func:`_search_geometry`), so
the search stays O(N) and the results equal ASE's ``neighbor_list`` on every kind of cell.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import vesin

__all__ = ["NeighborList", "VerletList", "neighbor_list", "neighbor_lists"]

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


def _completed_box(box: np.ndarray, periodic: np.ndarray, where: str) -> np.ndarray:
    """The periodic rows of ``box`` completed to a basis by orthonormal rows orthogonal to all of them.

    Rows of open directions never enter an edge vector (their shifts are zero), so any completion is valid;
    an orthogonal one makes the coordinate along an open direction independent of the periodic ones.
    """
    n_periodic = int(periodic.sum())
    if n_periodic == 0:
        return np.eye(3)
    rows = box[periodic]
    _, sv, vt = np.linalg.svd(rows, full_matrices=True)
    if sv.min() <= _DEGENERATE_RTOL * max(sv.max(), 1e-300):
        raise ValueError(
            f"{_prefix(where)}field 'cell' is degenerate along its periodic directions "
            f"(pbc={periodic.tolist()}, cell={box.tolist()}); periodic lattice vectors must be non-zero "
            "and linearly independent"
        )
    completed = box.copy()
    completed[~periodic] = vt[n_periodic:]
    return completed


class _SearchGeometry(NamedTuple):
    positions: np.ndarray
    box: np.ndarray
    periodic: np.ndarray
    moved: bool  # positions were changed: recompute distances from the real ones


def _search_geometry(
    pos: np.ndarray, box: np.ndarray, periodic: np.ndarray, cutoff: float, where: str
) -> _SearchGeometry:
    """What vesin is asked to search, chosen so that it stays O(N) and never sees a pathological box.

    vesin 0.6.2 takes time growing with the square of the extent along an open direction of a mixed-pbc
    system (~20 s for two atoms 30,000 Å apart above a slab) and dies with SIGFPE for boxes or open extents
    that are very elongated (its cap on the number of cells rounds a dimension to zero). So:

    1. A periodic direction whose images are out of reach (face distance > atoms' extent + cutoff along its
       normal) is treated as open: its shifts are zero anyway.
    2. Along every open direction (orthogonal to the periodic rows), gaps between consecutive atoms wider
       than ``2 * cutoff`` are shrunk to ``2 * cutoff``: atoms on either side of such a gap stay farther apart
       than the cutoff, atoms on one side move rigidly together, and the extent is at most
       ``2 * cutoff * N``.
    3. With both periodic and open directions, the open ones get a fake periodic row of length
       extent + ``2 * cutoff``, too long for any image to be within the cutoff, and vesin runs fully periodic.
    """
    rc2 = 2.0 * cutoff
    periodic = periodic.copy()
    completed = _completed_box(box, periodic, where)
    if periodic.any():
        inverse = np.linalg.inv(completed)
        frac = pos @ inverse
        heights = 1.0 / np.linalg.norm(inverse, axis=0)  # distances between opposite faces
        spans = np.ptp(frac, axis=0) * heights
        unreachable = periodic & (heights > spans + cutoff)
        if unreachable.any():
            periodic &= ~unreachable
            completed = _completed_box(box, periodic, where)
    if periodic.all():
        return _SearchGeometry(pos, box, periodic, False)

    search = pos
    moved = False
    fake = completed.copy()
    for axis in np.flatnonzero(~periodic):
        u = completed[axis]
        coord = search @ u
        order = np.argsort(coord, kind="stable")
        excess = np.maximum(np.diff(coord[order]) - rc2, 0.0)
        if excess.any():
            delta = np.empty_like(coord)
            delta[order] = -np.concatenate([[0.0], np.cumsum(excess)])
            search = search + delta[:, None] * u
            coord = coord + delta
            moved = True
        fake[axis] = u * (np.ptp(coord) + rc2)
    if not periodic.any():
        return _SearchGeometry(search, np.zeros((3, 3)), periodic, moved)
    return _SearchGeometry(search, fake, np.ones(3, dtype=bool), moved)


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
    n_atoms = pos.shape[0]
    rc_max = max(rcs)
    if n_atoms == 0:  # still validate the cell
        _completed_box(box, periodic, where)

    if n_atoms == 0:
        edge_index = np.zeros((2, 0), dtype=np.int64)
        s = np.zeros((0, 3), dtype=np.int64)
        d = np.zeros(0, dtype=np.float64)
    else:
        search = _search_geometry(pos, box, periodic, rc_max, where)
        # a half list (each pair once) mirrored here is ~1.6x faster than vesin's full list on 10^3 atoms
        calculator = vesin.NeighborList(cutoff=rc_max, full_list=False, n_threads=n_threads)
        i, j, s, d = calculator.compute(search.positions, search.box, search.periodic, quantities="ijSd", copy=False)
        i, j = _as_int64(i), _as_int64(j)
        i, j, s, d = np.concatenate([i, j]), np.concatenate([j, i]), np.concatenate([s, -s]), np.concatenate([d, d])
        # the sorted arrays are fresh copies, so vesin's buffers may be freed with `calculator`
        edge_index, s, d = _sorted_edges(i, j, s, d, n_atoms)
        del i, j, calculator
        if not periodic.all() and np.any(s[:, ~periodic]):  # vesin must never shift along an open direction
            raise RuntimeError(f"{_prefix(where)}vesin returned a shift along a non-periodic direction")
        if search.moved:  # same pairs, but take the distances from the real positions
            vec = pos[edge_index[1]] - pos[edge_index[0]] + s @ box
            d = np.sqrt(np.einsum("ij,ij->i", vec, vec))

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


class VerletList:
    """A neighbour list with a skin for MD: vesin searches at ``cutoff + skin``, and while no atom has moved more
    than ``skin / 2`` since that search, :meth:`update` filters the stored pairs at the current positions.

    Two atoms approach each other by at most ``skin`` in that time, so every pair closer than ``cutoff`` is in
    the stored list: :meth:`update` returns exactly what :func:`neighbor_list` would (same pairs, same order,
    current distances) for a fraction of the cost (one gather and a distance per stored pair instead of a
    search). Any change of the atom count, cell or ``pbc`` forces a new search, as does the first call;
    ``skin = 0`` searches on every call.

    Attributes:
        n_searches: vesin searches so far; ``n_calls``: calls of :meth:`update`.
    """

    def __init__(self, cutoff: float, skin: float = 0.5, n_threads: int = 1) -> None:
        if not (np.isfinite(cutoff) and cutoff > 0):
            raise ValueError(f"VerletList: cutoff must be positive, got {cutoff}")
        if not (np.isfinite(skin) and skin >= 0):
            raise ValueError(f"VerletList: skin must be >= 0, got {skin}")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.n_threads = n_threads
        self.n_searches = 0
        self.n_calls = 0
        self._ref: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._list: NeighborList | None = None
        self._shift_vec = np.zeros((0, 3))

    def _valid(self, pos: np.ndarray, box: np.ndarray, periodic: np.ndarray) -> bool:
        if self._ref is None or self.skin == 0.0:
            return False
        ref_pos, ref_box, ref_pbc = self._ref
        if pos.shape != ref_pos.shape or not np.array_equal(box, ref_box) or not np.array_equal(periodic, ref_pbc):
            return False
        if pos.shape[0] == 0:
            return True
        d = pos - ref_pos
        return float(np.einsum("ij,ij->i", d, d).max()) <= (0.5 * self.skin) ** 2

    def update(self, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray | bool | Sequence[bool], *,
               where: str = "") -> NeighborList:
        """The neighbour list within ``cutoff`` at these positions, searching again only when needed.

        Positions are compared as given (not wrapped into the cell): an atom wrapped across a face counts as a
        large move and triggers a search, which is always safe.
        """
        pos, box, periodic = _check_inputs(positions, cell, pbc, where)
        self.n_calls += 1
        if not self._valid(pos, box, periodic):
            if self.skin == 0.0:
                self.n_searches += 1
                return neighbor_lists(pos, box, periodic, [self.cutoff], n_threads=self.n_threads, where=where)[0]
            self._list = neighbor_lists(pos, box, periodic, [self.cutoff + self.skin], n_threads=self.n_threads,
                                        where=where)[0]
            self._ref = (pos.copy(), box.copy(), periodic.copy())
            self._shift_vec = self._list.shifts.astype(np.float64) @ box
            self.n_searches += 1
        assert self._list is not None
        edge_index, shifts = self._list.edge_index, self._list.shifts
        vec = np.take(pos, edge_index[1], axis=0)
        vec -= np.take(pos, edge_index[0], axis=0)
        vec += self._shift_vec
        d2 = np.einsum("ij,ij->i", vec, vec)
        idx = np.flatnonzero(d2 < self.cutoff * self.cutoff)
        return NeighborList(edge_index=np.take(edge_index, idx, axis=1), shifts=np.take(shifts, idx, axis=0),
                            distances=np.sqrt(np.take(d2, idx)))
