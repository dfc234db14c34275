"""DeePMD-kit ``deepmd/npy`` systems: ``type.raw``, ``type_map.raw`` and ``set.*/{coord,box,energy,force,virial}.npy``.

A *system* is a directory with one fixed formula: ``type.raw`` holds one type index per atom,
``type_map.raw`` one element symbol per type, and each ``set.NNN`` directory holds per-frame arrays with
one row per frame (``coord`` (F, 3N), ``box`` (F, 9), ``energy`` (F,) or (F, 1), ``force`` (F, 3N),
``virial`` (F, 9), all in eV / Å). An empty file named ``nopbc`` marks a non-periodic system (no
``box.npy`` needed). DeePMD-kit's virial sign is the one used throughout ``lam`` (``W = -dE/dstrain``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

from lam.data.errors import DataError, DataFileNotFoundError
from lam.data.frame import Frame
from lam.data.validate import check_structure, validate_frame

__all__ = ["find_systems", "read_deepmd", "read_deepmd_system", "write_deepmd"]


def find_systems(path: str | os.PathLike) -> list[Path]:
    """``path`` itself if it holds ``type.raw``, else every directory below it that does, sorted."""
    root = Path(path)
    if not root.exists():
        raise DataFileNotFoundError("no such file or directory", file=str(path))
    if not root.is_dir():
        raise DataError("a deepmd/npy system must be a directory", file=str(path))
    if (root / "type.raw").is_file():
        return [root]
    found = sorted(Path(d) for d, _, files in os.walk(root) if "type.raw" in files)
    if not found:
        raise DataError("no deepmd/npy system found (no directory below it holds a type.raw file)", file=str(path))
    return found


def _read_types(system: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-atom type indices and the atomic number of each type."""
    type_file = system / "type.raw"
    try:
        types = np.loadtxt(type_file, dtype=np.int64, ndmin=1)
    except ValueError as exc:
        raise DataError(f"cannot parse type indices: {exc}", file=str(type_file), field="type") from exc
    map_file = system / "type_map.raw"
    if not map_file.is_file():
        raise DataError(
            "type_map.raw is missing: it is needed to know which element each type index in type.raw is "
            "(write one element symbol per line, in type order, e.g. 'O' then 'H')",
            file=str(system),
            field="type_map",
        )
    symbols = map_file.read_text().split()
    z = []
    for k, sym in enumerate(symbols):
        if sym not in atomic_numbers or atomic_numbers[sym] == 0:
            raise DataError(f"unknown element symbol {sym!r} for type {k}", file=str(map_file), field="type_map")
        z.append(atomic_numbers[sym])
    if types.size == 0:
        raise DataError("type.raw lists no atoms (empty frame)", file=str(type_file), field="type")
    bad = (types < 0) | (types >= len(z))
    if bad.any():
        k = int(np.argmax(bad))
        raise DataError(
            f"atom {k} has type {int(types[k])} but type_map.raw defines only {len(z)} type(s) {symbols}",
            file=str(type_file),
            field="type",
        )
    return types, np.asarray(z, dtype=np.int64)


def _load(set_dir: Path, name: str, n_frames: int | None, width: Sequence[int]) -> np.ndarray | None:
    """Load ``set_dir/name.npy`` as float64 of shape (n_frames, *width); ``None`` if the file is absent."""
    f = set_dir / f"{name}.npy"
    if not f.is_file():
        return None
    try:
        a = np.load(f, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"cannot read .npy file: {exc}", file=str(f), field=name) from exc
    if n_frames is None:
        n_frames = a.shape[0] if a.ndim else 0
    size = int(np.prod(width))
    if a.ndim == 0 or a.shape[0] != n_frames or a.size != n_frames * size:
        want = f"({n_frames}, {size})" if size != 1 else f"({n_frames},) or ({n_frames}, 1)"
        raise DataError(f"shape {a.shape} != {want} (frames, values per frame)", file=str(f), field=name)
    return a.reshape((n_frames, *width)).astype(np.float64, copy=False)


def read_deepmd_system(
    system: str | os.PathLike,
    *,
    validate: bool = True,
    min_distance: float = 0.5,
    on_close: Literal["error", "warn", "ignore"] = "error",
) -> Iterator[Frame]:
    """Frames of one deepmd/npy system directory, set by set (sorted ``set.*``), frame by frame."""
    system = Path(system)
    types, z_of_type = _read_types(system)
    numbers = z_of_type[types]
    n = numbers.shape[0]
    nopbc = (system / "nopbc").exists()
    sets = sorted(p for p in system.glob("set.*") if p.is_dir())
    if not sets:
        raise DataError("no set.* directory", file=str(system))
    for set_dir in sets:
        coord = _load(set_dir, "coord", None, (n, 3))
        if coord is None:
            raise DataError("coord.npy is missing", file=str(set_dir), field="coord")
        nf = coord.shape[0]
        box = _load(set_dir, "box", nf, (3, 3))
        if box is None and not nopbc:
            raise DataError(
                "box.npy is missing and the system has no 'nopbc' marker file", file=str(set_dir), field="box"
            )
        energy = _load(set_dir, "energy", nf, ())
        force = _load(set_dir, "force", nf, (n, 3))
        virial = _load(set_dir, "virial", nf, (3, 3))
        pbc = np.zeros(3, dtype=bool) if nopbc else np.ones(3, dtype=bool)
        for k in range(nf):
            frame = Frame(
                numbers=numbers,
                positions=coord[k],
                cell=np.zeros((3, 3)) if nopbc or box is None else box[k],
                pbc=pbc,
                energy=None if energy is None else energy[k],
                forces=None if force is None else force[k],
                virial=None if virial is None else virial[k],
            )
            if validate:
                validate_frame(frame, source=str(set_dir), index=k, min_distance=min_distance, on_close=on_close)
            else:
                check_structure(frame, source=str(set_dir), index=k)
            yield frame


def read_deepmd(
    path: str | os.PathLike,
    *,
    validate: bool = True,
    min_distance: float = 0.5,
    on_close: Literal["error", "warn", "ignore"] = "error",
) -> Iterator[Frame]:
    """Frames of a deepmd/npy system, or of every system in a directory tree (sorted by path).

    Args:
        path: a system directory (holds ``type.raw``) or any directory containing systems.
        validate: run :func:`~lam.data.validate.validate_frame` on each frame (errors name the
            ``set.*`` directory and the frame index within it).
        min_distance, on_close: passed to :func:`~lam.data.validate.validate_frame`.

    Raises:
        DataError: missing ``type_map.raw``, unknown symbols, arrays whose shapes disagree with
            ``type.raw``, missing ``box.npy`` without ``nopbc``, or invalid frames.
    """
    for system in find_systems(path):
        yield from read_deepmd_system(system, validate=validate, min_distance=min_distance, on_close=on_close)


def write_deepmd(path: str | os.PathLike, frames: Iterable[Frame], *, set_size: int = 5000) -> int:
    """Write frames of one fixed formula (same ``numbers`` in the same order) as a deepmd/npy system.

    Labels are written only if every frame has them. Returns the number of frames written.
    """
    frames = list(frames)
    root = Path(path)
    if not frames:
        raise DataError("no frames to write", file=str(root))
    numbers = frames[0].numbers
    for k, f in enumerate(frames):
        if not np.array_equal(f.numbers, numbers):
            raise DataError(
                "deepmd/npy holds one fixed formula per system; this frame's atoms differ from frame 0",
                file=str(root),
                frame=k,
                field="numbers",
            )
    zs = sorted(set(numbers.tolist()))
    root.mkdir(parents=True, exist_ok=True)
    (root / "type_map.raw").write_text("".join(f"{chemical_symbols[z]}\n" for z in zs))
    (root / "type.raw").write_text("".join(f"{zs.index(z)}\n" for z in numbers.tolist()))
    periodic = [bool(f.pbc.any()) for f in frames]
    if any(periodic) and not all(periodic):
        raise DataError("cannot mix periodic and non-periodic frames in one system", file=str(root), field="pbc")
    if not any(periodic):
        (root / "nopbc").touch()
    for s, start in enumerate(range(0, len(frames), set_size)):
        chunk = frames[start : start + set_size]
        d = root / f"set.{s:03d}"
        d.mkdir(exist_ok=True)
        np.save(d / "coord.npy", np.stack([f.positions.reshape(-1) for f in chunk]))
        if any(periodic):
            np.save(d / "box.npy", np.stack([f.cell.reshape(-1) for f in chunk]))
        if all(f.energy is not None for f in frames):
            np.save(d / "energy.npy", np.array([f.energy for f in chunk], dtype=np.float64))
        if all(f.forces is not None for f in frames):
            np.save(d / "force.npy", np.stack([f.forces.reshape(-1) for f in chunk]))
        if all(f.virial is not None for f in frames):
            np.save(d / "virial.npy", np.stack([f.virial.reshape(-1) for f in chunk]))
    return len(frames)
