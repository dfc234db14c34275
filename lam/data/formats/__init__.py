"""Readers and writers. Every reader yields :class:`lam.data.frame.Frame` (numpy, eV / Å).

* :func:`read_any` — dispatch by format name or by sniffing the path.
* :mod:`~lam.data.formats.ase_io` — extxyz and anything ASE reads; :func:`write_extxyz`.
* :mod:`~lam.data.formats.deepmd_npy` — DeePMD-kit ``deepmd/npy`` systems.
* :mod:`~lam.data.formats.h5` — the LAM-H5 store (:func:`write_h5`, :class:`H5Reader`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lam.data.errors import DataError, DataFileNotFoundError
from lam.data.formats.ase_io import read_ase, write_extxyz
from lam.data.formats.deepmd_npy import read_deepmd, write_deepmd
from lam.data.formats.h5 import H5Reader, is_lam_h5, write_h5
from lam.data.frame import Frame
from lam.data.validate import validate_frame

__all__ = [
    "FORMATS",
    "H5Reader",
    "guess_format",
    "read_any",
    "read_ase",
    "read_deepmd",
    "write_deepmd",
    "write_extxyz",
    "write_h5",
]

FORMATS = {
    "ase": "ase",
    "extxyz": "ase",
    "xyz": "ase",
    "deepmd": "deepmd",
    "deepmd/npy": "deepmd",
    "npy": "deepmd",
    "lam-h5": "lam-h5",
    "h5": "lam-h5",
}
"""Accepted ``format`` names and the reader family each selects."""

_H5_SUFFIXES = (".h5", ".hdf5", ".hdf")


def guess_format(path: str | os.PathLike) -> str:
    """``"deepmd"`` for a directory holding ``type.raw`` files, ``"lam-h5"`` for an HDF5 file with
    ``format="lam-h5"``, else ``"ase"``. Raises :class:`DataError` for a missing path, a directory
    without deepmd systems, or an HDF5 file that is not LAM-H5."""
    p = Path(path)
    if not p.exists():
        raise DataFileNotFoundError("no such file or directory", file=str(path))
    if p.is_dir():
        return "deepmd"  # read_deepmd explains if no type.raw is found below it
    if p.suffix.lower() in _H5_SUFFIXES or _has_hdf5_signature(p):
        if is_lam_h5(p):
            return "lam-h5"
        if _has_hdf5_signature(p):
            raise DataError(
                "HDF5 file without the root attribute format='lam-h5' (convert it with `python -m lam.data "
                "convert`; vendor HDF5 layouts need their own reader)",
                file=str(path),
                field="format",
            )
        return "lam-h5"  # .h5 name but not HDF5: H5Reader reports it as corrupt
    return "ase"


def _has_hdf5_signature(p: Path) -> bool:
    try:
        with open(p, "rb") as fh:
            return fh.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


def _read_h5(path: str | os.PathLike, validate: bool = False, min_distance: float = 0.5, on_close: Any = "error"):
    reader = H5Reader(path)
    try:
        for k, frame in enumerate(reader.iter_frames()):
            if validate:
                validate_frame(frame, source=str(path), index=k, min_distance=min_distance, on_close=on_close)
            yield frame
    finally:
        reader.close()


def read_any(path: str | os.PathLike, format: str | None = None, **kw: Any) -> Iterator[Frame]:
    """Frames from ``path`` in any supported format.

    Args:
        path: a file or a directory.
        format: one of :data:`FORMATS` (``"extxyz"``/``"ase"``, ``"deepmd"``, ``"lam-h5"``); sniffed
            with :func:`guess_format` if ``None``.
        **kw: passed to the reader: ``validate``, ``min_distance``, ``on_close`` for all; ``index``,
            ``energy_key``, ``forces_key``, ``stress_key``, ``virial_key``, ``format`` … for ASE. LAM-H5
            files were validated when written, so they are only re-validated with ``validate=True``.
    """
    if format is None:
        family = guess_format(path)
    else:
        family = FORMATS.get(format.lower())
        if family is None:
            raise DataError(f"unknown format {format!r}; choose one of {sorted(FORMATS)}", file=str(path))
    if family == "ase":
        if format is not None and format.lower() not in ("ase", "extxyz", "xyz"):
            kw.setdefault("format", format)
        elif format is not None and format.lower() == "extxyz":
            kw.setdefault("format", "extxyz")
        return read_ase(path, **kw)
    ase_only = {"index", "energy_key", "forces_key", "stress_key", "virial_key", "format"}
    given = sorted(k for k, v in kw.items() if k in ase_only and v is not None)
    if given:
        raise DataError(f"options {given} apply to ASE-readable files only, not to {family}", file=str(path))
    kw = {k: v for k, v in kw.items() if k not in ase_only}
    if family == "deepmd":
        return read_deepmd(path, **kw)
    return _read_h5(path, **kw)
