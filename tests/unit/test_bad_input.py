"""Bad input gives one clear DataError that names the file, the frame and the field."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import ase.io
import h5py
import numpy as np
import pytest
from ase import Atoms

from lam.data.errors import DataError, DataWarning
from lam.data.formats import read_any, read_ase, read_deepmd, write_h5
from lam.data.formats.h5 import H5Reader
from lam.data.frame import Frame
from lam.data.validate import validate_frame


def _copy_system(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    for p in dst.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return dst


def _edit_npy(path: Path, edit) -> None:
    a = np.load(path)
    edit(a)
    np.save(path, a)


def test_unknown_element(tmp_path: Path) -> None:
    path = tmp_path / "ghost.extxyz"
    good = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    bad = Atoms("HXO", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])  # X: atomic number 0
    ase.io.write(path, [good, bad])
    with pytest.raises(DataError) as info:
        list(read_ase(path))
    assert str(info.value) == (
        f"{path}: frame 1, field 'numbers': unknown element: atomic number 0 at atom 1 (valid: 1..118)"
    )
    assert (info.value.file, info.value.frame, info.value.field) == (str(path), 1, "numbers")
    # an unknown symbol in a deepmd type map is reported against type_map.raw
    system = _copy_system(Path(__file__).parents[1] / "data" / "deepmd_gete_216", tmp_path / "gete")
    (system / "type_map.raw").write_text("Ge\nQq\n")
    with pytest.raises(DataError, match=r"type_map.raw: field 'type_map': unknown element symbol 'Qq' for type 1"):
        next(read_deepmd(system))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_positions(value: float, gete_dir: Path, tmp_path: Path) -> None:
    system = _copy_system(gete_dir, tmp_path / "gete")

    def edit(coord):
        coord[3, 3 * 5 + 1] = value  # frame 3, atom 5, y

    _edit_npy(system / "set.000" / "coord.npy", edit)
    with pytest.raises(DataError) as info:
        list(read_deepmd(system))
    msg = str(info.value)
    assert msg.startswith(f"{system / 'set.000'}: frame 3, field 'positions': 1 non-finite value(s)")
    assert "first at atom 5" in msg


@pytest.mark.parametrize(("npy", "field"), [("energy", "energy"), ("force", "forces")])
def test_nan_in_energy_or_forces(npy: str, field: str, water_dir: Path, tmp_path: Path) -> None:
    system = _copy_system(water_dir / "data_2", tmp_path / "water")

    def edit(a):
        a.reshape(a.shape[0], -1)[17, -1] = np.nan

    _edit_npy(system / "set.000" / f"{npy}.npy", edit)
    with pytest.raises(DataError, match=rf"^{system / 'set.000'}: frame 17, field '{field}': 1 non-finite value"):
        list(read_deepmd(system))


def test_forces_shape_mismatch(water_dir: Path, tmp_path: Path) -> None:
    frames = list(read_deepmd(water_dir / "data_0", validate=False))[:20]
    frames[17].forces = frames[17].forces[:191]
    dst = tmp_path / "water.h5"
    with pytest.raises(DataError) as info:
        write_h5(dst, frames, source="water.h5")
    assert str(info.value) == "water.h5: frame 17, field 'forces': shape (191, 3) != (n_atoms=192, 3)"
    assert not dst.exists()
    # in a deepmd set: the per-frame width of force.npy disagrees with type.raw
    system = _copy_system(water_dir / "data_0", tmp_path / "sys")
    _edit_npy(system / "set.000" / "force.npy", lambda a: None)
    np.save(system / "set.000" / "force.npy", np.load(system / "set.000" / "force.npy")[:, :-3])
    with pytest.raises(DataError, match=r"force.npy: field 'force': shape \(80, 573\) != \(80, 576\)"):
        next(read_deepmd(system))


def test_virial_not_3x3(tmp_path: Path) -> None:
    atoms = Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]], cell=np.eye(3) * 5, pbc=True)
    atoms.info["REF_virial"] = np.arange(4.0)
    path = tmp_path / "v.extxyz"
    ase.io.write(path, atoms)
    with pytest.raises(DataError, match=r"v.extxyz: frame 0, field 'virial': shape \(4,\) is neither"):
        list(read_ase(path, virial_key="REF_virial"))


def test_empty_frame(tmp_path: Path) -> None:
    empty = Frame(numbers=np.zeros(0, dtype=int), positions=np.zeros((0, 3)))
    water = Frame(numbers=[8, 1, 1], positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], energy=-14.0)
    with pytest.raises(DataError, match=r"^mols.xyz: frame 1, field 'numbers': empty frame \(0 atoms\)$"):
        write_h5(tmp_path / "mols.h5", [water, empty], source="mols.xyz")


def test_overlapping_atoms_error_and_warn(water_dir: Path, tmp_path: Path) -> None:
    frames = list(read_deepmd(water_dir / "data_3", validate=False))[:3]
    bad = frames[2]
    bad.positions[40] = bad.positions[41] + [0.1, 0.1, 0.1]  # 0.17 Å apart
    with pytest.raises(DataError) as info:
        write_h5(tmp_path / "w.h5", frames, source="water.npy")
    msg = str(info.value)
    assert msg.startswith("water.npy: frame 2, field 'positions': 1 atom pair(s) closer than min_distance=0.5 Å")
    assert "atoms 40 (Z=8) and 41 (Z=8) at 0.1732 Å" in msg  # the first 64 atoms are O
    assert not (tmp_path / "w.h5").exists()

    with pytest.warns(DataWarning, match=r"water.npy: frame 2, field 'positions': 1 atom pair"):
        assert write_h5(tmp_path / "w.h5", frames, source="water.npy", on_close="warn") == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate_frame(bad, source="x", index=0, on_close="ignore")
        validate_frame(bad, source="x", index=0, min_distance=0.1)

    # across the periodic boundary: 0.2 Å through the image, 12.2 Å apart in the box
    box = Frame(numbers=[1, 1], positions=[[0.1, 1, 1], [12.345, 1, 1]], cell=np.eye(3) * 12.445, pbc=True)
    with pytest.raises(DataError, match=r"atoms 0 \(Z=1\) and 1 \(Z=1\) \(periodic image \[-1, 0, 0\]\) at 0.2000 Å"):
        validate_frame(box, source="box.xyz", index=0)
    validate_frame(box.__class__(numbers=[1, 1], positions=box.positions), source="molecule", index=0)


def test_corrupt_hdf5_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "random.h5"
    path.write_bytes(np.random.default_rng(0).bytes(20000))
    with pytest.raises(DataError, match=rf"^{path}: not a readable HDF5 file .*file signature not found"):
        H5Reader(path)
    with pytest.raises(DataError, match=str(path)):
        list(read_any(path))


def test_truncated_hdf5(water_h5: Path, tmp_path: Path) -> None:
    data = water_h5.read_bytes()
    half = tmp_path / "half.h5"
    half.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=rf"^{half}: not a readable HDF5 file .*truncated"):
        H5Reader(half)
    # damage inside the file (one compressed chunk of positions overwritten): found on read, with the frame
    broken = tmp_path / "broken.h5"
    with h5py.File(water_h5, "r") as f:
        chunk = f["positions"].id.get_chunk_info(30)
    damaged_frame = chunk.chunk_offset[0] // 192 + 1  # a frame whose atoms lie in that chunk
    buf = bytearray(data)
    buf[chunk.byte_offset : chunk.byte_offset + chunk.size] = b"\x00" * chunk.size
    broken.write_bytes(bytes(buf))
    reader = H5Reader(broken)
    reader[10]  # undamaged frames still read
    with pytest.raises(DataError, match=rf"^{broken}: frame {damaged_frame}, field 'positions': cannot read stored"):
        reader[damaged_frame]


def test_wrong_schema_version(water_h5: Path, tmp_path: Path) -> None:
    path = tmp_path / "future.h5"
    shutil.copy(water_h5, path)
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = 2
    with pytest.raises(DataError) as info:
        H5Reader(path)
    assert str(info.value) == (
        f"{path}: field 'schema_version': unsupported schema_version 2; this version of lam reads schema_version 1"
    )
    with h5py.File(path, "a") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(DataError, match="field 'format': not a LAM-H5 file"):
        H5Reader(path)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.h5"
    for call in (lambda: H5Reader(missing), lambda: list(read_any(missing)), lambda: list(read_deepmd(missing))):
        with pytest.raises(DataError, match=rf"^{missing}: no such file") as info:
            call()
        assert isinstance(info.value, FileNotFoundError)


def test_failed_write_leaves_no_destination_and_no_temp_file(water_dir: Path, tmp_path: Path) -> None:
    good = list(read_deepmd(water_dir / "data_0", validate=False))[:8]

    def frames_then_failure():
        yield from good
        bad = Frame(numbers=good[0].numbers, positions=good[0].positions.copy())
        bad.positions[7, 0] = np.nan
        yield bad

    out = tmp_path / "out"
    out.mkdir()
    dst = out / "water.h5"
    with pytest.raises(DataError, match="frame 8, field 'positions'"):
        write_h5(dst, frames_then_failure())
    assert list(out.iterdir()) == []

    def interrupted():
        yield good[0]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_h5(dst, interrupted())
    assert list(out.iterdir()) == []

    # an existing file is left untouched by a failed overwrite
    assert write_h5(dst, good[:2]) == 2
    before = dst.read_bytes()
    with pytest.raises(DataError):
        write_h5(dst, frames_then_failure())
    assert dst.read_bytes() == before and [p.name for p in out.iterdir()] == ["water.h5"]
