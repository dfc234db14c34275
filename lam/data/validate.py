"""Checks that a :class:`~lam.data.frame.Frame` is well formed and physically plausible.

:func:`check_structure` is cheap (shapes only) and always runs when frames are written;
:func:`validate_frame` adds value checks (element range, finite numbers, periodic cell) and a
minimum-distance check through the project's neighbour list. Both raise :class:`~lam.data.errors.DataError`
whose message names the source, the frame and the field.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np

from lam.data.errors import DataError, DataWarning, format_location
from lam.data.frame import Frame

__all__ = ["check_structure", "validate_frame", "MAX_ATOMIC_NUMBER"]

MAX_ATOMIC_NUMBER = 118
_SEARCH_CUTOFF = 1.5


def _shape(x: object) -> tuple[int, ...]:
    return tuple(np.shape(x))


def check_structure(frame: Frame, *, source: str, index: int) -> None:
    """Cheap checks a writer needs to store the frame: shapes, at least one atom, atomic numbers in 1..118."""

    def err(field: str | None, reason: str) -> DataError:
        return DataError(reason, file=source, frame=index, field=field)

    numbers = np.asarray(frame.numbers)
    if numbers.ndim != 1:
        raise err("numbers", f"shape {_shape(numbers)} is not one-dimensional (n_atoms,)")
    n = numbers.shape[0]
    if n == 0:
        raise err("numbers", "empty frame (0 atoms)")
    if _shape(frame.positions) != (n, 3):
        raise err("positions", f"shape {_shape(frame.positions)} != (n_atoms={n}, 3)")
    if _shape(frame.cell) != (3, 3):
        raise err("cell", f"shape {_shape(frame.cell)} != (3, 3)")
    if _shape(frame.pbc) != (3,):
        raise err("pbc", f"shape {_shape(frame.pbc)} != (3,)")
    if frame.forces is not None and _shape(frame.forces) != (n, 3):
        raise err("forces", f"shape {_shape(frame.forces)} != (n_atoms={n}, 3)")
    if frame.virial is not None and _shape(frame.virial) != (3, 3):
        raise err("virial", f"shape {_shape(frame.virial)} != (3, 3)")
    if frame.energy is not None and np.size(frame.energy) != 1:
        raise err("energy", f"shape {_shape(frame.energy)} is not a scalar")
    bad = (numbers < 1) | (numbers > MAX_ATOMIC_NUMBER)
    if bad.any():
        k = int(np.argmax(bad))
        z = int(numbers[k])
        raise err("numbers", f"unknown element: atomic number {z} at atom {k} (valid: 1..{MAX_ATOMIC_NUMBER})")


def _check_finite(values: np.ndarray, field: str, source: str, index: int, per_atom: bool) -> None:
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    first = np.argwhere(bad)[0]
    value = values[tuple(first)]
    if per_atom:
        where = f" (first at atom {int(first[0])}, value {value})"
    elif values.ndim:
        where = f" (first at {tuple(int(k) for k in first)}, value {value})"
    else:
        where = f" ({value})"
    raise DataError(f"{int(bad.sum())} non-finite value(s) (NaN or inf){where}", file=source, frame=index, field=field)


def _check_cell(frame: Frame, source: str, index: int) -> None:
    periodic = np.asarray(frame.pbc, dtype=bool)
    if not periodic.any():
        return
    rows = np.asarray(frame.cell, dtype=np.float64)[periodic]
    sv = np.linalg.svd(rows, compute_uv=False)
    if sv.min() <= 1e-9 * max(sv.max(), 1e-300):
        raise DataError(
            f"periodic along {periodic.tolist()} but the lattice vectors {rows.tolist()} are zero or "
            "linearly dependent",
            file=source,
            frame=index,
            field="cell",
        )


def _check_distances(
    frame: Frame, source: str, index: int, min_distance: float, on_close: Literal["error", "warn"]
) -> None:
    from lam.data.neighbors import neighbor_list

    try:
        # vesin's cell list gets slow for tiny cutoffs (many empty cells: ~4 ms at 0.5 Å vs ~0.8 ms at 1.5 Å
        # for 192 atoms of water), so search a little wider and filter.
        nl = neighbor_list(frame.positions, frame.cell, frame.pbc, max(min_distance, _SEARCH_CUTOFF))
    except ValueError as exc:  # should be caught by the checks above; keep the location if not
        raise DataError(str(exc), file=source, frame=index, field="positions") from exc
    close = nl.distances < min_distance
    if not close.any():
        return
    distances = nl.distances[close]
    k = int(np.argmin(distances))
    i, j = (int(a) for a in nl.edge_index[:, close][:, k])
    shift = nl.shifts[close][k].tolist()
    image = "" if not any(shift) else f" (periodic image {shift})"
    n_pairs = distances.size // 2  # full list: each pair appears twice
    numbers = np.asarray(frame.numbers)
    reason = (
        f"{max(n_pairs, 1)} atom pair(s) closer than min_distance={min_distance} Å; closest: atoms {i} "
        f"(Z={int(numbers[i])}) and {j} (Z={int(numbers[j])}){image} at {distances[k]:.4f} Å"
    )
    if on_close == "error":
        raise DataError(reason, file=source, frame=index, field="positions")
    warnings.warn(f"{format_location(source, index, 'positions')}: {reason}", DataWarning, stacklevel=3)


def validate_frame(
    frame: Frame,
    *,
    source: str,
    index: int,
    min_distance: float = 0.5,
    on_close: Literal["error", "warn", "ignore"] = "error",
) -> None:
    """Raise :class:`DataError` if ``frame`` is malformed or implausible.

    Checks, in order: :func:`check_structure` (shapes, empty frame, atomic numbers in 1..118), finite
    positions, cell, energy, forces and virial, a non-degenerate cell along periodic
    directions, and no two atoms (or periodic images) closer than ``min_distance`` Å.

    Args:
        frame: the frame to check.
        source: the file the frame came from, used in the message.
        index: the frame's index within ``source``, used in the message.
        min_distance: smallest allowed interatomic distance in Å; ``0`` disables the check.
        on_close: what to do with atoms closer than ``min_distance``: raise (``"error"``), emit a
            :class:`~lam.data.errors.DataWarning` (``"warn"``) or skip the check (``"ignore"``).
    """
    if on_close not in ("error", "warn", "ignore"):
        raise ValueError(f"on_close must be 'error', 'warn' or 'ignore', got {on_close!r}")
    check_structure(frame, source=source, index=index)
    _check_finite(np.asarray(frame.positions), "positions", source, index, per_atom=True)
    _check_finite(np.asarray(frame.cell), "cell", source, index, per_atom=False)
    if frame.energy is not None:
        _check_finite(np.asarray(frame.energy, dtype=np.float64), "energy", source, index, per_atom=False)
    if frame.forces is not None:
        _check_finite(np.asarray(frame.forces), "forces", source, index, per_atom=True)
    if frame.virial is not None:
        _check_finite(np.asarray(frame.virial), "virial", source, index, per_atom=False)
    _check_cell(frame, source, index)
    if on_close != "ignore" and min_distance > 0:
        _check_distances(frame, source, index, float(min_distance), on_close)
