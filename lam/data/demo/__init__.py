"""Demo datasets shipped with ``lam``: small H/C/N/O molecules with real PySCF DFT labels.

Three LAM-H5 files, one per head, made by ``scripts/make_demo_data.py`` (provenance in ``README.md`` next to
this file)::

    demo_pbe.h5    PBE/def2-SVP      head "pbe"
    demo_wb97x.h5  wB97X/def2-SVP    head "wb97x"
    demo_rpbe.h5   RPBE/def2-SVP     head "rpbe"
"""

from __future__ import annotations

from pathlib import Path

DEMO_HEADS: tuple[str, ...] = ("pbe", "wb97x", "rpbe")
"""Head names of the demo datasets, in the order the default pretraining demo lists them."""

DEMO_FUNCTIONALS: dict[str, str] = {"pbe": "PBE", "wb97x": "wB97X", "rpbe": "RPBE"}
"""Functional stored in each demo file, by head."""

_DEMO_DIR = Path(__file__).resolve().parent


def demo_path(head: str) -> Path:
    """Path of the shipped LAM-H5 demo file for ``head`` (one of :data:`DEMO_HEADS`).

    Raises ``ValueError`` for an unknown head and ``FileNotFoundError`` when the package was installed
    without its data files.
    """
    if head not in DEMO_HEADS:
        raise ValueError(f"unknown demo head {head!r}; expected one of {DEMO_HEADS}")
    path = _DEMO_DIR / f"demo_{head}.h5"
    if not path.is_file():
        raise FileNotFoundError(
            f"demo data file {path} is missing: reinstall lam with its package data or regenerate it with "
            "`python scripts/make_demo_data.py`"
        )
    return path


__all__ = ["DEMO_FUNCTIONALS", "DEMO_HEADS", "demo_path"]
