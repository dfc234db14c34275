"""Extended XYZ and every other format :func:`ase.io.read` understands.

Labels come from the attached (single-point) calculator — where ASE puts ``energy``, ``forces`` and
``stress`` of an extxyz file — or from ``atoms.info`` / ``atoms.arrays`` keys that the caller names
(``REF_energy`` …). ASE stress (eV/Å³, ``sigma = (1/V) dE/dstrain``) becomes the ``lam`` virial
``W = -sigma * V`` (eV). A 3×3 ``virial`` info key is read as a virial directly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lam.data.errors import DataError, DataFileNotFoundError
from lam.data.frame import Frame
from lam.data.validate import check_structure, validate_frame

__all__ = ["atoms_to_frame", "frame_to_atoms", "read_ase", "write_extxyz"]


def _calc_result(atoms: Any, name: str) -> Any:
    calc = atoms.calc
    if calc is None:
        return None
    return getattr(calc, "results", {}).get(name)


def _named(atoms: Any, key: str, field: str, source: str, index: int, per_atom: bool) -> Any:
    """A label stored under a user-named key: ``atoms.arrays`` / ``atoms.info``, then calculator results."""
    if per_atom and key in atoms.arrays:
        return atoms.arrays[key]
    if key in atoms.info:
        return atoms.info[key]
    value = _calc_result(atoms, key)
    if value is not None:
        return value
    where = "atoms.arrays" if per_atom else "atoms.info"
    available = sorted(atoms.arrays if per_atom else atoms.info)
    raise DataError(
        f"key {key!r} not found in {where} or calculator results (available: {available})",
        file=source,
        frame=index,
        field=field,
    )


def _to_3x3(value: Any, field: str, source: str, index: int) -> np.ndarray:
    a = np.asarray(value, dtype=np.float64)
    if a.shape == (6,):  # Voigt order xx yy zz yz xz xy
        xx, yy, zz, yz, xz, xy = a
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    if a.size == 9:
        return a.reshape(3, 3)
    raise DataError(f"shape {a.shape} is neither (3, 3), (9,) nor Voigt (6,)", file=source, frame=index, field=field)


def atoms_to_frame(
    atoms: Any,
    *,
    source: str = "<atoms>",
    index: int = 0,
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
    virial_key: str | None = None,
) -> Frame:
    """Convert one :class:`ase.Atoms` to a :class:`Frame` (see :func:`read_ase` for the label rules)."""
    if energy_key is not None:
        energy = _named(atoms, energy_key, "energy", source, index, per_atom=False)
    else:
        energy = _calc_result(atoms, "energy")
        if energy is None:
            energy = atoms.info.get("energy")
    if forces_key is not None:
        forces = _named(atoms, forces_key, "forces", source, index, per_atom=True)
    else:
        forces = _calc_result(atoms, "forces")
        if forces is None:
            forces = atoms.arrays.get("forces")

    if virial_key is not None:
        virial = _to_3x3(_named(atoms, virial_key, "virial", source, index, False), "virial", source, index)
        stress = None
    elif stress_key is not None:
        virial = None
        stress = _named(atoms, stress_key, "stress", source, index, per_atom=False)
    else:
        virial = atoms.info.get("virial")
        virial = None if virial is None else _to_3x3(virial, "virial", source, index)
        stress = _calc_result(atoms, "stress") if virial is None else None
    if stress is not None:
        volume = float(abs(np.linalg.det(np.asarray(atoms.cell.array))))
        if volume <= 0.0:
            raise DataError(
                "a stress label needs a cell with non-zero volume to become a virial (W = -stress * V)",
                file=source,
                frame=index,
                field="stress",
            )
        virial = -_to_3x3(stress, "stress", source, index) * volume

    if energy is not None and np.size(energy) != 1:
        raise DataError(f"shape {np.shape(energy)} is not a scalar", file=source, frame=index, field="energy")
    return Frame(
        numbers=atoms.numbers,
        positions=atoms.positions,
        cell=np.asarray(atoms.cell.array),
        pbc=np.asarray(atoms.pbc),
        energy=energy,
        forces=forces,
        virial=virial,
    )


def _iter_atoms(path: str, index: str | int | slice, fmt: str | None) -> Iterator[Any]:
    import ase.io

    try:
        if isinstance(index, int):
            yield ase.io.read(path, index=index, format=fmt)
            return
        try:
            iterator = ase.io.iread(path, index=index, format=fmt)
            first = next(iterator, None)
        except ValueError as exc:  # formats without streaming support
            if "iread" not in str(exc) and "Can only read one" not in str(exc):
                raise
            images = ase.io.read(path, index=index, format=fmt)
            yield from images if isinstance(images, list) else [images]
            return
        if first is None:
            return
        yield first
        yield from iterator
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataFileNotFoundError("no such file", file=path) from exc
    except Exception as exc:  # ASE raises many types (XYZError, ValueError, IndexError, …) on bad files
        raise DataError(f"ASE could not read it: {type(exc).__name__}: {exc}", file=path) from exc


def read_ase(
    path: str | os.PathLike,
    index: str | int | slice = ":",
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
    virial_key: str | None = None,
    *,
    format: str | None = None,
    validate: bool = True,
    min_distance: float = 0.5,
    on_close: Literal["error", "warn", "ignore"] = "error",
) -> Iterator[Frame]:
    """Frames from an extxyz file (streamed) or any file :func:`ase.io.read` handles.

    Args:
        path: the file.
        index: ASE index string (``":"`` all, ``"-1"`` last, ``"::10"`` …), an int or a slice.
        energy_key: ``atoms.info`` key holding the total energy (eV). Default: the calculator's
            ``energy`` (what ASE makes of an extxyz ``energy=`` field), else ``info["energy"]``.
        forces_key: ``atoms.arrays`` key holding forces (eV/Å). Default: the calculator's ``forces``.
        stress_key: ``atoms.info`` key holding the ASE stress (eV/Å³, 3×3, 9 or Voigt 6); converted to
            the virial ``-stress * volume``. Default: the calculator's ``stress``.
        virial_key: ``atoms.info`` key holding a virial (eV, 3×3 or 9) in ``lam``'s sign
            (``W = -dE/dstrain``). Default: ``info["virial"]`` if present (takes precedence over stress).
        format: ASE format name; guessed from the file name if ``None``.
        validate: run :func:`~lam.data.validate.validate_frame` on each frame.
        min_distance, on_close: passed to :func:`~lam.data.validate.validate_frame`.

    Raises:
        DataError: unreadable file, a named key that a frame lacks, or an invalid frame.
    """
    source = str(path)
    if not Path(source).exists():
        raise DataFileNotFoundError("no such file", file=source)
    if isinstance(index, str) and index.lstrip("-").isdigit():
        index = int(index)
    keys = dict(energy_key=energy_key, forces_key=forces_key, stress_key=stress_key, virial_key=virial_key)
    for k, atoms in enumerate(_iter_atoms(source, index, format)):
        frame = atoms_to_frame(atoms, source=source, index=k, **keys)
        if validate:
            validate_frame(frame, source=source, index=k, min_distance=min_distance, on_close=on_close)
        else:
            check_structure(frame, source=source, index=k)
        yield frame


def frame_to_atoms(frame: Frame) -> Any:
    """An :class:`ase.Atoms` with the frame's labels in a single-point calculator (energy, forces)
    and the virial in ``info["virial"]`` (it needs no cell volume, so it also works for molecules)."""
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
    results = {}
    if frame.energy is not None:
        results["energy"] = frame.energy
    if frame.forces is not None:
        results["forces"] = frame.forces
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
    if frame.virial is not None:
        atoms.info["virial"] = frame.virial.copy()
    return atoms


def write_extxyz(path: str | os.PathLike, frames: Iterable[Frame]) -> int:
    """Write frames as extended XYZ (streamed). Returns the number of frames written.

    Positions and forces are written with 8 decimals (ASE's extxyz writer), so a round trip is exact to
    ~1e-8 Å / eV/Å, not bit-exact; use LAM-H5 for bit-exact storage.
    """
    import ase.io

    n = 0
    with open(path, "w") as fh:
        for frame in frames:
            ase.io.write(fh, frame_to_atoms(frame), format="extxyz")
            n += 1
    return n
