"""Shared fixtures: paths to the real DeePMD-kit test datasets in tests/data (see tests/data/README.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """``tests/data``: four small DeePMD-kit datasets (LGPL-3.0-or-later), shipped with the repository."""
    return DATA_DIR


@pytest.fixture(scope="session")
def water_dir(data_dir: Path) -> Path:
    """Liquid water, 64 H2O: 400 frames x 192 atoms in 4 deepmd/npy systems; energy + forces, periodic."""
    return data_dir / "deepmd_water_64h2o"


@pytest.fixture(scope="session")
def cho_dir(data_dir: Path) -> Path:
    """Gas-phase C/H/O: 3 non-periodic systems of 7, 10 and 8 atoms (1562 + 485 + 15 = 2062 frames)."""
    return data_dir / "deepmd_cho_combustion_nopbc"


@pytest.fixture(scope="session")
def gete_dir(data_dir: Path) -> Path:
    """GeTe solid: 36 frames x 216 atoms, periodic; energy.npy has shape (36, 1)."""
    return data_dir / "deepmd_gete_216"


@pytest.fixture(scope="session")
def water_virial_dir(data_dir: Path) -> Path:
    """Liquid water, 128 H2O: 30 frames x 384 atoms with virial labels and a varying cell."""
    return data_dir / "deepmd_water_128h2o_virial"


@pytest.fixture(scope="session")
def water_h5(water_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``deepmd_water_64h2o`` converted once per session to LAM-H5 (read-only: copy it before modifying)."""
    from lam.data.formats.deepmd_npy import read_deepmd
    from lam.data.formats.h5 import write_h5

    path = tmp_path_factory.mktemp("lam_h5") / "water_64h2o.h5"
    write_h5(path, read_deepmd(water_dir, validate=False), functional="unknown", head="water", source=str(water_dir))
    return path
