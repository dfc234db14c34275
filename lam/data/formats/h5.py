"""LAM-H5: the project's training-data store (one HDF5 file per dataset, ragged frames).

Layout (schema_version 1; ``F`` frames, ``A`` atoms in total; see ``docs/data-format.md``)::

    /offsets    (F+1,)   int64    frame k owns atoms offsets[k]:offsets[k+1]
    /numbers    (A,)     int16    atomic numbers
    /positions  (A, 3)   float64  Å
    /forces     (A, 3)   float64  eV/Å (zeros where has_forces is False)
    /has_forces (F,)     bool
    /energy     (F,)     float64  eV (0 where has_energy is False)
    /has_energy (F,)     bool
    /cell       (F, 3, 3) float64 Å, rows are lattice vectors (zeros when there is none)
    /pbc        (F, 3)   bool
    /virial     (F, 3, 3) float64 eV, W = -dE/dstrain (zeros where has_virial is False)
    /has_virial (F,)     bool

Root attributes: ``format="lam-h5"``, ``schema_version=1``, ``functional``, ``head``, ``source``, units,
``lam_version``, ``created``, ``n_frames``, ``n_atoms_total``. Files are written atomically (temporary file
in the destination directory + :func:`os.replace`), so a reader never sees a partial file.
"""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from lam.data.errors import DataError, DataFileNotFoundError
from lam.data.frame import Frame
from lam.data.validate import MAX_ATOMIC_NUMBER, check_structure, validate_frame

__all__ = ["FORMAT", "SCHEMA_VERSION", "DATASETS", "H5Reader", "is_lam_h5", "write_h5"]

FORMAT = "lam-h5"
SCHEMA_VERSION = 1
UNITS = {
    "units_energy": "eV",
    "units_length": "Angstrom",
    "units_forces": "eV/Angstrom",
    "units_virial": "eV",
}

# name -> (dtype, trailing shape, per-atom?)
PER_ATOM: dict[str, tuple[type, tuple[int, ...]]] = {
    "numbers": (np.int16, ()),
    "positions": (np.float64, (3,)),
    "forces": (np.float64, (3,)),
}
PER_FRAME: dict[str, tuple[type, tuple[int, ...]]] = {
    "energy": (np.float64, ()),
    "has_energy": (np.bool_, ()),
    "has_forces": (np.bool_, ()),
    "cell": (np.float64, (3, 3)),
    "pbc": (np.bool_, (3,)),
    "virial": (np.float64, (3, 3)),
    "has_virial": (np.bool_, ()),
}
DATASETS = ("offsets", *PER_ATOM, *PER_FRAME)

# Chunks of 1024 atoms (24 KiB of positions) and 256 frames; gzip level 4 with byte shuffling. Measured on
# 12,000 water frames (2.3 M atoms): gzip is ~9 % smaller than lzf and no slower to read at random; large
# chunks (4096 atoms / 1024 frames) make random frame reads 2-3x slower. See docs/data-format.md.
ATOM_CHUNK = 1024
FRAME_CHUNK = 256
DEFAULT_COMPRESSION: Literal["gzip", "lzf"] = "gzip"
# Frames are buffered and appended in blocks of at most this many atoms / frames.
_FLUSH_ATOMS = 1 << 16
_FLUSH_FRAMES = 4096


def _compression_kwargs(compression: str) -> dict[str, Any]:
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    if compression == "lzf":
        return {"compression": "lzf", "shuffle": True}
    if compression == "none":
        return {}
    raise ValueError(f"compression must be 'gzip', 'lzf' or 'none', got {compression!r}")


class _Buffer:
    """Frames waiting to be appended to the growing datasets."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.n_atoms = 0

    def add(self, frame: Frame) -> bool:
        self.frames.append(frame)
        self.n_atoms += frame.n_atoms
        return self.n_atoms >= _FLUSH_ATOMS or len(self.frames) >= _FLUSH_FRAMES

    def flush(self, f: h5py.File, n_frames: int, n_atoms: int) -> None:
        """Append the buffered frames after ``n_frames`` frames / ``n_atoms`` atoms already written."""
        frames = self.frames
        if not frames:
            return
        zeros3 = np.zeros((3, 3))
        per_atom = {
            "numbers": np.concatenate([fr.numbers for fr in frames]).astype(np.int16),
            "positions": np.concatenate([fr.positions for fr in frames]),
            "forces": np.concatenate(
                [fr.forces if fr.forces is not None else np.zeros((fr.n_atoms, 3)) for fr in frames]
            ),
        }
        per_frame = {
            "energy": np.array([fr.energy if fr.energy is not None else 0.0 for fr in frames]),
            "has_energy": np.array([fr.energy is not None for fr in frames]),
            "has_forces": np.array([fr.forces is not None for fr in frames]),
            "cell": np.stack([fr.cell for fr in frames]),
            "pbc": np.stack([fr.pbc for fr in frames]),
            "virial": np.stack([fr.virial if fr.virial is not None else zeros3 for fr in frames]),
            "has_virial": np.array([fr.virial is not None for fr in frames]),
        }
        counts = np.array([fr.n_atoms for fr in frames], dtype=np.int64)
        per_frame_offsets = n_atoms + np.cumsum(counts)
        a_end = n_atoms + int(counts.sum())
        f_end = n_frames + len(frames)
        for name, values in per_atom.items():
            f[name].resize(a_end, axis=0)
            f[name][n_atoms:a_end] = values
        for name, values in per_frame.items():
            f[name].resize(f_end, axis=0)
            f[name][n_frames:f_end] = values
        f["offsets"].resize(f_end + 1, axis=0)
        f["offsets"][n_frames + 1 : f_end + 1] = per_frame_offsets
        self.frames = []
        self.n_atoms = 0


def _create_datasets(f: h5py.File, compression: str) -> None:
    kw = _compression_kwargs(compression)
    f.create_dataset("offsets", data=np.zeros(1, np.int64), maxshape=(None,), chunks=(FRAME_CHUNK,), **kw)
    for name, (dtype, tail) in PER_ATOM.items():
        f.create_dataset(name, shape=(0, *tail), maxshape=(None, *tail), dtype=dtype, chunks=(ATOM_CHUNK, *tail), **kw)
    for name, (dtype, tail) in PER_FRAME.items():
        f.create_dataset(name, shape=(0, *tail), maxshape=(None, *tail), dtype=dtype, chunks=(FRAME_CHUNK, *tail), **kw)


def write_h5(
    path: str | os.PathLike,
    frames: Iterable[Frame],
    *,
    functional: str = "unknown",
    head: str = "",
    source: str = "",
    validate: bool = True,
    progress: bool = False,
    min_distance: float = 0.5,
    on_close: Literal["error", "warn", "ignore"] = "error",
    compression: Literal["gzip", "lzf", "none"] = DEFAULT_COMPRESSION,
) -> int:
    """Stream ``frames`` into a new LAM-H5 file at ``path``; returns the number of frames written.

    Frames are appended in blocks (never all in memory). The file is first written to a temporary file in
    the destination directory and moved into place with :func:`os.replace` only when complete; on any
    error the temporary file is deleted and ``path`` is left untouched (absent, or the previous file).

    Args:
        path: destination file (``.h5``); an existing file is replaced atomically.
        frames: any iterable of :class:`Frame` (e.g. a reader's generator).
        functional: DFT functional of the labels (``"PBE"``, ``"wB97X"`` …) or ``"unknown"``.
        head: name of the model head these labels train (may be ``""``).
        source: free text naming the origin of the data; also used as the file name in validation
            errors (``"input of <path>"`` if empty).
        validate: run :func:`~lam.data.validate.validate_frame` on each frame (shapes are always checked).
        progress: show a tqdm progress bar.
        min_distance, on_close: passed to :func:`~lam.data.validate.validate_frame`.
        compression: ``"lzf"`` (default, fastest reads), ``"gzip"`` (level 4, smaller) or ``"none"``.
    """
    dst = Path(path)
    if not dst.parent.is_dir():
        raise DataFileNotFoundError("the destination directory does not exist", file=str(dst.parent))
    label = source or f"input of {dst}"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    bar = None
    try:
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(desc=f"writing {dst.name}", unit=" frames")
        with h5py.File(tmp, "w") as f:
            _create_datasets(f, compression)
            buffer = _Buffer()
            n_frames = n_atoms = 0
            for k, frame in enumerate(frames):
                if validate:
                    validate_frame(frame, source=label, index=k, min_distance=min_distance, on_close=on_close)
                else:
                    check_structure(frame, source=label, index=k)
                if buffer.add(frame):
                    size = len(buffer.frames), buffer.n_atoms
                    buffer.flush(f, n_frames, n_atoms)
                    n_frames, n_atoms = n_frames + size[0], n_atoms + size[1]
                if bar is not None:
                    bar.update(1)
            size = len(buffer.frames), buffer.n_atoms
            buffer.flush(f, n_frames, n_atoms)
            n_frames, n_atoms = n_frames + size[0], n_atoms + size[1]
            f.attrs.update(_root_attrs(functional, head, source, n_frames, n_atoms))
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    return n_frames


def _root_attrs(functional: str, head: str, source: str, n_frames: int, n_atoms: int) -> dict[str, Any]:
    from lam import __version__

    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "functional": str(functional),
        "head": str(head),
        "source": str(source),
        **UNITS,
        "lam_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "n_frames": int(n_frames),
        "n_atoms_total": int(n_atoms),
    }


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _open(path: str) -> h5py.File:
    if not os.path.exists(path):
        raise DataFileNotFoundError("no such file", file=path)
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"not a readable HDF5 file (corrupt, truncated or another format): {exc}", file=path) from exc


def is_lam_h5(path: str | os.PathLike) -> bool:
    """True if ``path`` is an HDF5 file whose root ``format`` attribute is ``"lam-h5"``."""
    try:
        with h5py.File(path, "r") as f:
            return _plain(f.attrs.get("format")) == FORMAT
    except (OSError, ValueError):
        return False


def _check_schema(f: h5py.File, path: str) -> tuple[dict[str, Any], np.ndarray]:
    """Validate the layout; return the root attributes and the offsets."""
    attrs = {k: _plain(v) for k, v in f.attrs.items()}
    if attrs.get("format") != FORMAT:
        raise DataError(
            f"not a LAM-H5 file: root attribute format={attrs.get('format')!r}, expected {FORMAT!r}",
            file=path,
            field="format",
        )
    version = attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DataError(
            f"unsupported schema_version {version!r}; this version of lam reads schema_version {SCHEMA_VERSION}",
            file=path,
            field="schema_version",
        )
    missing = [name for name in DATASETS if name not in f]
    if missing:
        raise DataError(f"missing dataset(s) {missing}", file=path, field=missing[0])
    try:
        offsets = f["offsets"][()].astype(np.int64)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read offsets: {exc}", file=path, field="offsets") from exc
    n_frames = offsets.shape[0] - 1
    n_atoms = int(offsets[-1]) if n_frames >= 0 else -1
    if offsets.ndim != 1 or n_frames < 0 or offsets[0] != 0 or np.any(np.diff(offsets) <= 0):
        raise DataError("offsets must start at 0 and increase strictly (no empty frames)", file=path, field="offsets")
    if attrs.get("n_frames", n_frames) != n_frames:
        raise DataError(f"attribute n_frames={attrs['n_frames']} but offsets hold {n_frames} frames", file=path)
    for name, (_, tail) in PER_ATOM.items():
        if f[name].shape != (n_atoms, *tail):
            raise DataError(f"shape {f[name].shape} != ({n_atoms}, {tail}) from offsets", file=path, field=name)
    for name, (_, tail) in PER_FRAME.items():
        if f[name].shape != (n_frames, *tail):
            raise DataError(f"shape {f[name].shape} != ({n_frames}, {tail}) from offsets", file=path, field=name)
    return attrs, offsets


class H5Reader:
    """Random and sequential access to a LAM-H5 file.

    The file is checked once in ``__init__`` (schema, shapes, offsets; the handle is closed again) and
    then opened lazily on first access *in each process*: the reader remembers the process id that opened
    it and reopens after a fork, so one reader can be handed to DataLoader workers (fork or spawn — it
    pickles without its handle). ``offsets`` and the ``has_*`` / ``pbc`` flags are kept in memory.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        with _open(self.path) as f:
            self.attrs, self.offsets = _check_schema(f, self.path)
            try:
                self._flags = {name: f[name][()].astype(bool) for name in ("has_energy", "has_forces", "has_virial")}
                self._pbc = f["pbc"][()].astype(bool)
            except (OSError, ValueError) as exc:
                raise DataError(f"cannot read per-frame flags: {exc}", file=self.path) from exc
        self._h5: h5py.File | None = None
        self._pid: int | None = None
        self._ds: dict[str, h5py.Dataset] = {}

    # -- process-safe lazy handle ---------------------------------------------------------------------
    def _file(self) -> h5py.File:
        pid = os.getpid()
        if self._h5 is None or self._pid != pid:
            # After a fork the inherited handle belongs to the parent: drop it (never close or use it here).
            self._h5 = _open(self.path)
            self._pid = pid
            self._ds = {}
        return self._h5

    def _dataset(self, name: str) -> h5py.Dataset:
        f = self._file()
        ds = self._ds.get(name)
        if ds is None:  # a group lookup costs ~50 µs; keep the Dataset objects of this process's handle
            ds = self._ds[name] = f[name]
        return ds

    def close(self) -> None:
        """Close this process's handle (it is reopened on the next access)."""
        if self._h5 is not None and self._pid == os.getpid():
            self._h5.close()
        self._h5 = None
        self._pid = None
        self._ds = {}

    def __enter__(self) -> H5Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_h5"] = None
        state["_pid"] = None
        state["_ds"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # -- access ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @property
    def n_atoms(self) -> np.ndarray:
        """(F,) int64 number of atoms of each frame."""
        return np.diff(self.offsets)

    def _read(self, name: str, sel: slice | int, frame: int) -> np.ndarray:
        try:
            return self._dataset(name)[sel]
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"cannot read stored data: {exc}", file=self.path, frame=frame, field=name) from exc

    def _check_read(self, frame: Frame, index: int) -> Frame:
        """Cheap checks of the stored values (files written by write_h5 pass; others may not)."""
        if np.any((frame.numbers < 1) | (frame.numbers > MAX_ATOMIC_NUMBER)):
            z = int(frame.numbers[(frame.numbers < 1) | (frame.numbers > MAX_ATOMIC_NUMBER)][0])
            raise DataError(f"unknown element: atomic number {z}", file=self.path, frame=index, field="numbers")
        for name, values in (("positions", frame.positions), ("forces", frame.forces), ("energy", frame.energy)):
            if values is not None and not np.all(np.isfinite(values)):
                raise DataError("non-finite value(s) (NaN or inf)", file=self.path, frame=index, field=name)
        return frame

    def __getitem__(self, index: int) -> Frame:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"{self.path}: frame index {index} out of range for {n} frames")
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        atoms = slice(a, b)
        frame = Frame(
            numbers=self._read("numbers", atoms, i),
            positions=self._read("positions", atoms, i),
            cell=self._read("cell", i, i),
            pbc=self._pbc[i],
            energy=self._read("energy", i, i) if self._flags["has_energy"][i] else None,
            forces=self._read("forces", atoms, i) if self._flags["has_forces"][i] else None,
            virial=self._read("virial", i, i) if self._flags["has_virial"][i] else None,
        )
        return self._check_read(frame, i)

    def iter_frames(self, start: int = 0, stop: int | None = None, block: int = FRAME_CHUNK) -> Iterator[Frame]:
        """Frames ``start..stop`` in order, read in blocks of ``block`` frames (much faster than indexing)."""
        stop = len(self) if stop is None else min(stop, len(self))
        for s in range(start, stop, block):
            e = min(s + block, stop)
            a, b = int(self.offsets[s]), int(self.offsets[e])
            arrays = {}
            for name in PER_ATOM:
                arrays[name] = self._read(name, slice(a, b), s)
            for name in ("energy", "cell", "virial"):
                arrays[name] = self._read(name, slice(s, e), s)
            for k in range(s, e):
                lo, hi = int(self.offsets[k]) - a, int(self.offsets[k + 1]) - a
                frame = Frame(
                    numbers=arrays["numbers"][lo:hi].copy(),
                    positions=arrays["positions"][lo:hi].copy(),
                    cell=arrays["cell"][k - s],
                    pbc=self._pbc[k],
                    energy=arrays["energy"][k - s] if self._flags["has_energy"][k] else None,
                    forces=arrays["forces"][lo:hi].copy() if self._flags["has_forces"][k] else None,
                    virial=arrays["virial"][k - s].copy() if self._flags["has_virial"][k] else None,
                )
                yield self._check_read(frame, k)

    def __iter__(self) -> Iterator[Frame]:
        return self.iter_frames()

    def read_array(self, name: str) -> np.ndarray:
        """A whole dataset (``"energy"``, ``"forces"``, ``"offsets"`` …) in one read, for statistics."""
        if name not in DATASETS:
            raise DataError(f"no dataset {name!r}; LAM-H5 datasets are {list(DATASETS)}", file=self.path, field=name)
        return self._read(name, slice(None), None)

    def __repr__(self) -> str:
        return f"H5Reader({self.path!r}, n_frames={len(self)}, functional={self.attrs.get('functional')!r})"
