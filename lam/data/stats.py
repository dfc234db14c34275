"""Dataset statistics in one streaming pass: per-element energy references, force RMS, energy spread.

Element references solve the least-squares problem ``E_f ≈ Σ_Z n_fZ · e_Z`` over all frames ``f`` with an
energy label. The fit is streamed with incremental QR updates (TSQR): only ``R`` (k × k for the k elements
seen) and ``Qᵀb`` are kept, in float64, so memory does not grow with the dataset, the condition number is not
squared as with the normal equations ``AᵀA``, and partial results from several files or workers can be
:meth:`merged <ElementReferenceAccumulator.merge>`. Each fitting head gets its own accumulator (one dataset
= one head).

Degenerate data — an element set that always appears in a fixed ratio, as in pure water where H:O = 2:1 —
leaves some combination of references undetermined: the per-molecule energy is identified, the split between
elements is not. We then warn (:class:`DegenerateReferenceWarning`, naming the elements) and return the
minimum-norm solution, as ``np.linalg.lstsq`` would. ``ridge > 0`` regularises instead.

For a LAM-H5 file (a path, an ``h5py.File`` or an ``H5Reader``) the fast path reads ``/offsets``,
``/numbers``, ``/energy``, ``/has_energy``, ``/forces`` and ``/has_forces`` in slices of ``chunk_frames``
frames and builds the count matrix with ``np.bincount``; there is no per-frame Python loop.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lam.data.errors import DataError
from lam.data.frame import Frame

__all__ = [
    "DatasetStatistics",
    "DegenerateReferenceWarning",
    "ElementReferenceAccumulator",
    "StatisticsError",
    "compute_statistics",
]

N_Z = 119  # atomic numbers 0..118; column Z of the count matrix is element Z


class StatisticsError(DataError):
    """Bad input to the statistics (names the file/frame/field when known)."""


class DegenerateReferenceWarning(UserWarning):
    """Element references are not identifiable from the data; a minimum-norm solution is returned."""


def _symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[z]


def _atomic_number(symbol: str) -> int:
    from ase.data import atomic_numbers

    if symbol not in atomic_numbers or symbol == "X":
        raise StatisticsError(f"unknown element symbol {symbol!r}")
    return atomic_numbers[symbol]


@dataclass
class ChunkArrays:
    """A block of frames in ragged form (what both the H5 fast path and the Frame path produce)."""

    numbers: np.ndarray  # (A,) int
    n_atoms: np.ndarray  # (F,) int
    energy: np.ndarray  # (F,) float
    has_energy: np.ndarray  # (F,) bool
    forces: np.ndarray | None  # (A, 3) or None
    has_forces: np.ndarray  # (F,) bool


def _counts_matrix(numbers: np.ndarray, n_atoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(F, k) element counts for the k atomic numbers ``present`` in this chunk, via one ``np.bincount``."""
    n_frames = n_atoms.shape[0]
    present = np.flatnonzero(np.bincount(numbers, minlength=N_Z))
    col = np.full(N_Z, -1, dtype=np.int64)
    col[present] = np.arange(present.size)
    frame_of_atom = np.repeat(np.arange(n_frames, dtype=np.int64), n_atoms)
    flat = frame_of_atom * present.size + col[numbers]
    counts = np.bincount(flat, minlength=n_frames * present.size).reshape(n_frames, present.size)
    return counts.astype(np.float64), present


class _StreamingQR:
    """Streaming least squares ``min ‖A x − b‖`` by incremental (TSQR) QR updates.

    Keeps only ``R`` (k × k, upper triangular) and ``Qᵀb`` for the k element columns seen so far, plus the
    residual sum of squares of everything already folded in. Unlike the normal equations ``AᵀA`` this does not
    square the condition number, so residuals are exact to rounding even when they are 10⁻⁸ of the energies.
    """

    def __init__(self) -> None:
        self.cols = np.zeros(0, dtype=np.int64)  # atomic number of each column
        self.r = np.zeros((0, 0))
        self.qtb = np.zeros(0)
        self.rss = 0.0

    def _align(self, zs: np.ndarray) -> np.ndarray:
        """Add columns for new atomic numbers; return the column index of each of ``zs``."""
        new = np.setdiff1d(zs, self.cols)
        if new.size:
            k, kn = self.cols.size, self.cols.size + new.size
            r = np.zeros((kn, kn))
            r[:k, :k] = self.r
            self.r = r
            self.qtb = np.concatenate([self.qtb, np.zeros(new.size)])
            self.cols = np.concatenate([self.cols, new])
        lookup = {int(z): i for i, z in enumerate(self.cols)}
        return np.array([lookup[int(z)] for z in zs], dtype=np.int64)

    def add(self, zs: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        """Fold in rows ``a`` (m × len(zs), columns = atomic numbers ``zs``) with targets ``b``."""
        idx = self._align(zs)
        full = np.zeros((a.shape[0], self.cols.size))
        full[:, idx] = a
        self._fold(full, b)

    def _fold(self, a: np.ndarray, b: np.ndarray) -> None:
        m = np.vstack([self.r, a])
        y = np.concatenate([self.qtb, b])
        q, r = np.linalg.qr(m, mode="reduced")
        qty = q.T @ y
        resid = y - q @ qty
        self.rss += float(resid @ resid)
        self.r, self.qtb = r, qty

    def merge(self, other: _StreamingQR, shift_delta: float = 0.0) -> None:
        """Fold in another state; ``shift_delta`` is added to its targets (valid because every row of A
        sums to the same weight that multiplies the shift, so the change is ``shift_delta · R 1``)."""
        if other.cols.size == 0:
            return
        idx = self._align(other.cols)
        r = np.zeros((other.cols.size, self.cols.size))
        r[:, idx] = other.r
        self.rss += other.rss
        self._fold(r, other.qtb + shift_delta * other.r.sum(axis=1))

    def residual(self, x: np.ndarray) -> float:
        """Residual sum of squares ``‖A x − b‖²`` for coefficients ``x`` in column order."""
        d = self.r @ x - self.qtb
        return self.rss + float(d @ d)


class ElementReferenceAccumulator:
    """Streaming least squares for per-element energies plus energy/force moments.

    Feed chunks with :meth:`add_chunk` (ragged arrays) or :meth:`add_frames`; call :meth:`solve` at the end.
    Energies are shifted by a constant energy per atom ``shift`` (the mean of the first chunk); as every
    frame's counts sum to its atom count, the shift is added back exactly to every reference. With
    ``ridge > 0`` the solution is shrunk towards that shift (``min ‖A x − b‖² + ridge ‖x − shift‖²``).
    """

    def __init__(self, ridge: float = 0.0) -> None:
        if ridge < 0:
            raise StatisticsError(f"ridge must be >= 0, got {ridge}")
        self.ridge = float(ridge)
        self.shift: float | None = None
        self.total = _StreamingQR()  # rows: counts,        target E − shift·n
        self.per_atom = _StreamingQR()  # rows: counts / n,  target E/n − shift
        self.element_counts = np.zeros(N_Z, dtype=np.int64)
        self.n_frames = 0
        self.n_atoms = 0
        self.n_frames_energy = 0
        self.n_frames_forces = 0
        self.n_atoms_forces = 0
        self.force_sq_sum = 0.0
        self.epa_sum = 0.0  # Σ (E/n − shift)
        self.epa_sq_sum = 0.0  # Σ (E/n − shift)²

    # ------------------------------------------------------------------------------------------ feeding
    def add_chunk(self, chunk: ChunkArrays) -> None:
        """Accumulate one block of frames (vectorised)."""
        numbers = np.asarray(chunk.numbers, dtype=np.int64)
        n_atoms = np.asarray(chunk.n_atoms, dtype=np.int64)
        if n_atoms.sum() != numbers.shape[0]:
            raise StatisticsError(f"n_atoms sums to {n_atoms.sum()} but there are {numbers.shape[0]} numbers",
                                  field="offsets")
        if numbers.size and (numbers.min() < 1 or numbers.max() >= N_Z):
            bad = numbers[(numbers < 1) | (numbers >= N_Z)][0]
            raise StatisticsError(f"atomic number {bad} outside 1..118", field="numbers")
        if np.any(n_atoms <= 0):
            raise StatisticsError("a frame has no atoms", field="offsets")

        has_f = np.asarray(chunk.has_forces, dtype=bool)
        if chunk.forces is not None and has_f.any():
            atom_mask = np.repeat(has_f, n_atoms)
            f = np.asarray(chunk.forces, dtype=np.float64)[atom_mask]
            if not np.all(np.isfinite(f)):
                raise StatisticsError("non-finite value in a frame flagged has_forces", field="forces")
            force_sq, n_af, n_ff = float(np.einsum("ij,ij->", f, f)), int(atom_mask.sum()), int(has_f.sum())
        else:
            force_sq, n_af, n_ff = 0.0, 0, 0

        has_e = np.asarray(chunk.has_energy, dtype=bool)
        if has_e.any():
            energy = np.asarray(chunk.energy, dtype=np.float64)[has_e]
            if not np.all(np.isfinite(energy)):
                raise StatisticsError("non-finite value in a frame flagged has_energy", field="energy")
            counts, present = _counts_matrix(numbers, n_atoms)
            counts = counts[has_e]
            n = n_atoms[has_e].astype(np.float64)
            if self.shift is None:
                self.shift = float(np.mean(energy / n))
            pb = energy / n - self.shift
            self.total.add(present, counts, energy - self.shift * n)
            self.per_atom.add(present, counts / n[:, None], pb)
            self.epa_sum += float(pb.sum())
            self.epa_sq_sum += float(pb @ pb)
            self.n_frames_energy += int(has_e.sum())
        # counters last, so that a chunk rejected above leaves the accumulator unchanged
        self.n_frames += int(n_atoms.size)
        self.n_atoms += int(numbers.size)
        self.element_counts += np.bincount(numbers, minlength=N_Z)
        self.force_sq_sum += force_sq
        self.n_atoms_forces += n_af
        self.n_frames_forces += n_ff

    def add_frames(self, frames: Iterable[Frame], chunk_frames: int = 4096) -> None:
        """Accumulate :class:`Frame` objects, batched into chunks of ``chunk_frames``."""
        for chunk in _chunks_from_frames(frames, chunk_frames):
            self.add_chunk(chunk)

    def merge(self, other: ElementReferenceAccumulator) -> None:
        """Add another accumulator's data (e.g. from another file or worker) into this one."""
        if self.shift is None:
            self.shift = other.shift
        d = 0.0 if other.shift is None else float(other.shift - self.shift)
        self.total.merge(other.total, d)
        self.per_atom.merge(other.per_atom, d)
        ne = other.n_frames_energy
        self.epa_sq_sum += other.epa_sq_sum + 2 * d * other.epa_sum + d * d * ne
        self.epa_sum += other.epa_sum + d * ne
        for name in ("element_counts", "n_frames", "n_atoms", "n_frames_energy", "n_frames_forces",
                     "n_atoms_forces", "force_sq_sum"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    # ------------------------------------------------------------------------------------------ solving
    def _solve_references(self, rcond: float) -> tuple[np.ndarray, list[str]]:
        """References (shift included) in ``self.total.cols`` order, and the degenerate combinations."""
        r, qtb, cols = self.total.r, self.total.qtb, self.total.cols
        k = cols.size
        shift = np.full(k, self.shift or 0.0)
        if self.ridge > 0:
            x = np.linalg.solve(r.T @ r + self.ridge * np.eye(k), r.T @ qtb)
            return x + shift, []
        norms = np.linalg.norm(r, axis=0)
        scale = np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0)
        _, s_scaled, vt_scaled = np.linalg.svd(r * scale[None, :])
        null_scaled = s_scaled < rcond * max(s_scaled.max(), 1.0)
        rank = int((~null_scaled).sum())
        degenerate = []
        for row in vt_scaled[null_scaled]:
            vec = row * scale
            vec = vec / np.abs(vec).max()
            degenerate.append(" ".join(f"{_symbol(int(z))}:{c:+.3f}" for z, c in zip(cols, vec) if abs(c) > 1e-6))
        # minimum-norm solution of R x = Qᵀb on the rank-`rank` subspace (same as np.linalg.lstsq on A)
        u, s, vt = np.linalg.svd(r)
        x = vt[:rank].T @ ((u[:, :rank].T @ qtb) / s[:rank])
        if rank < k:  # remove the shift's component along the unidentifiable directions too
            null = vt[rank:]
            shift = shift - null.T @ (null @ shift)
        return x + shift, degenerate

    def solve(self, elements: list[str] | None = None, rcond: float = 1e-9) -> DatasetStatistics:
        """Solve for the references and summarise everything accumulated so far.

        ``elements`` (e.g. the model's type map) lists the symbols to report; requested elements absent from
        the data get reference 0.0 and are listed in ``absent_elements``. ``rcond`` is the relative singular
        value threshold, on the column-normalised count matrix, below which a direction counts as degenerate
        (a :class:`DegenerateReferenceWarning` names the elements involved).
        """
        refs = np.zeros(N_Z)
        degenerate: list[str] = []
        resid_rms = resid_rms_pa = float("nan")
        ne = self.n_frames_energy
        if ne:
            cols = self.total.cols
            x_full, degenerate = self._solve_references(rcond)
            refs[cols] = x_full
            if degenerate:
                warnings.warn(
                    "element references are not identifiable: the elements in "
                    + "; ".join(f"[{d}]" for d in degenerate)
                    + " always appear in fixed ratios, so that combination of references does not change any "
                    "energy; returning the minimum-norm solution. Add data with other compositions, set "
                    "ridge > 0, or fix the references by hand.",
                    DegenerateReferenceWarning,
                    stacklevel=2,
                )
            x = x_full - (self.shift or 0.0)
            resid_rms = math.sqrt(max(self.total.residual(x), 0.0) / ne)
            pa_idx = self.per_atom._align(cols)
            xp = np.zeros(self.per_atom.cols.size)
            xp[pa_idx] = x
            resid_rms_pa = math.sqrt(max(self.per_atom.residual(xp), 0.0) / ne)

        present = np.flatnonzero(self.element_counts)
        requested = [_atomic_number(s) for s in elements] if elements is not None else []
        report = sorted(set(present.tolist()) | set(requested))
        absent = [_symbol(z) for z in requested if self.element_counts[z] == 0]
        extra = [_symbol(int(z)) for z in present if requested and int(z) not in requested]
        if ne:
            epa_mean = self.epa_sum / ne + (self.shift or 0.0)
            epa_var = max(self.epa_sq_sum / ne - (self.epa_sum / ne) ** 2, 0.0)
        else:
            epa_mean, epa_var = float("nan"), float("nan")
        return DatasetStatistics(
            n_frames=self.n_frames,
            n_atoms=self.n_atoms,
            n_frames_energy=ne,
            n_frames_forces=self.n_frames_forces,
            element_counts={_symbol(z): int(self.element_counts[z]) for z in report},
            element_energies={_symbol(z): float(refs[z]) for z in report},
            absent_elements=absent,
            unexpected_elements=extra,
            energy_per_atom_mean=float(epa_mean),
            energy_per_atom_std=float(math.sqrt(epa_var)),
            residual_rms=resid_rms,
            residual_rms_per_atom=resid_rms_pa,
            force_rms=(math.sqrt(self.force_sq_sum / (3 * self.n_atoms_forces)) if self.n_atoms_forces
                       else float("nan")),
            degenerate=degenerate,
            ridge=self.ridge,
        )


@dataclass
class DatasetStatistics:
    """Result of :func:`compute_statistics`. Energies in eV, forces in eV/Å.

    ``element_energies``: symbol → reference energy (eV); 0.0 for requested elements absent from the data.
    ``residual_rms``: RMS over frames of ``E − Σ n_Z e_Z`` (eV); ``residual_rms_per_atom``: RMS of the same
    residual divided by the frame's atom count (eV/atom). ``energy_per_atom_mean/std``: raw ``E/n`` over frames.
    ``force_rms``: RMS of all Cartesian force components of frames with forces. ``degenerate``: one entry per
    unidentifiable combination of references (empty when the fit is well posed).
    """

    n_frames: int
    n_atoms: int
    n_frames_energy: int
    n_frames_forces: int
    element_counts: dict[str, int]
    element_energies: dict[str, float]
    absent_elements: list[str]
    unexpected_elements: list[str]
    energy_per_atom_mean: float
    energy_per_atom_std: float
    residual_rms: float
    residual_rms_per_atom: float
    force_rms: float
    degenerate: list[str] = field(default_factory=list)
    ridge: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable mapping."""
        return asdict(self)

    def reference_vector(self, type_map: list[str]) -> np.ndarray:
        """References in ``type_map`` order (0.0 for elements not in the statistics)."""
        return np.array([self.element_energies.get(s, 0.0) for s in type_map], dtype=np.float64)


# ------------------------------------------------------------------------------------------------ sources


def _chunks_from_frames(frames: Iterable[Frame], chunk_frames: int) -> Iterator[ChunkArrays]:
    buf: list[Frame] = []
    index = 0
    for frame in frames:
        if not isinstance(frame, Frame):
            raise StatisticsError(f"expected lam.data.frame.Frame, got {type(frame).__name__}", frame=index)
        if frame.forces is not None and frame.forces.shape != (frame.n_atoms, 3):
            raise StatisticsError(f"shape {frame.forces.shape}, expected ({frame.n_atoms}, 3)", frame=index,
                                  field="forces")
        buf.append(frame)
        index += 1
        if len(buf) >= chunk_frames:
            yield _pack(buf)
            buf = []
    if buf:
        yield _pack(buf)


def _pack(frames: list[Frame]) -> ChunkArrays:
    n_atoms = np.array([f.n_atoms for f in frames], dtype=np.int64)
    has_f = np.array([f.forces is not None for f in frames], dtype=bool)
    forces = np.concatenate(
        [f.forces if f.forces is not None else np.zeros((f.n_atoms, 3)) for f in frames]) if has_f.any() else None
    return ChunkArrays(
        numbers=np.concatenate([f.numbers for f in frames]),
        n_atoms=n_atoms,
        energy=np.array([f.energy if f.energy is not None else 0.0 for f in frames], dtype=np.float64),
        has_energy=np.array([f.energy is not None for f in frames], dtype=bool),
        forces=forces,
        has_forces=has_f,
    )


def _chunks_from_h5(h5: Any, chunk_frames: int, name: str) -> Iterator[ChunkArrays]:
    """Slices of a LAM-H5 file (an open ``h5py.File``); reads only the six arrays the statistics need."""
    for key in ("offsets", "numbers", "energy", "has_energy"):
        if key not in h5:
            raise StatisticsError("dataset missing; not a LAM-H5 file?", file=name, field=key)
    offsets_ds = h5["offsets"]
    n_frames = offsets_ds.shape[0] - 1
    has_forces_ds = h5["has_forces"] if "has_forces" in h5 else None
    forces_ds = h5["forces"] if "forces" in h5 else None
    for i0 in range(0, n_frames, chunk_frames):
        i1 = min(i0 + chunk_frames, n_frames)
        off = np.asarray(offsets_ds[i0 : i1 + 1], dtype=np.int64)
        a0, a1 = int(off[0]), int(off[-1])
        n_atoms = np.diff(off)
        if np.any(n_atoms <= 0):
            bad = i0 + int(np.flatnonzero(n_atoms <= 0)[0])
            raise StatisticsError("offsets must be strictly increasing", file=name, frame=bad, field="offsets")
        has_f = (np.asarray(has_forces_ds[i0:i1], dtype=bool) if has_forces_ds is not None
                 else np.zeros(i1 - i0, dtype=bool))
        forces = np.asarray(forces_ds[a0:a1], dtype=np.float64) if (forces_ds is not None and has_f.any()) else None
        yield ChunkArrays(
            numbers=np.asarray(h5["numbers"][a0:a1], dtype=np.int64),
            n_atoms=n_atoms,
            energy=np.asarray(h5["energy"][i0:i1], dtype=np.float64),
            has_energy=np.asarray(h5["has_energy"][i0:i1], dtype=bool),
            forces=forces,
            has_forces=has_f,
        )


def _feed_h5(acc: ElementReferenceAccumulator, h5: Any, chunk_frames: int, name: str) -> None:
    for i0, chunk in zip(range(0, 1 << 62, chunk_frames), _chunks_from_h5(h5, chunk_frames, name)):
        try:
            acc.add_chunk(chunk)
        except StatisticsError as exc:
            if exc.file is not None:
                raise
            raise StatisticsError(f"{exc.reason} (in frames {i0}..{i0 + chunk.n_atoms.size - 1})", file=name,
                                  field=exc.field) from exc


def _h5_path_of(source: Any) -> str | None:
    for attr in ("path", "filename", "_path"):
        p = getattr(source, attr, None)
        if isinstance(p, (str, os.PathLike)) and Path(p).is_file():
            return str(p)
    return None


def compute_statistics(
    source: Any,
    *,
    elements: list[str] | None = None,
    chunk_frames: int = 65536,
    ridge: float = 0.0,
) -> DatasetStatistics:
    """One streaming pass over a dataset → :class:`DatasetStatistics`.

    ``source``: a LAM-H5 path (``str``/``Path``), an open ``h5py.File``, an ``H5Reader`` (fast path), or any
    iterable of :class:`~lam.data.frame.Frame`. ``elements``: symbols to report (the type map); ``ridge``:
    Tikhonov term added to ``AᵀA`` (0 = plain least squares, minimum norm if degenerate).
    """
    import h5py

    if chunk_frames < 1:
        raise StatisticsError(f"chunk_frames must be >= 1, got {chunk_frames}")
    acc = ElementReferenceAccumulator(ridge=ridge)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise StatisticsError("file not found", file=str(path))
        with h5py.File(path, "r") as h5:
            _feed_h5(acc, h5, chunk_frames, str(path))
    elif isinstance(source, h5py.File):
        _feed_h5(acc, source, chunk_frames, source.filename)
    elif (h5_path := _h5_path_of(source)) is not None:
        with h5py.File(h5_path, "r") as h5:
            _feed_h5(acc, h5, chunk_frames, h5_path)
    elif hasattr(source, "__iter__") or hasattr(source, "iter_frames"):
        frames = source.iter_frames() if hasattr(source, "iter_frames") else source
        acc.add_frames(frames, chunk_frames=min(chunk_frames, 8192))
    else:
        raise StatisticsError(f"cannot compute statistics of a {type(source).__name__}")
    return acc.solve(elements=elements)
