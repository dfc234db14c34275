"""Readers on the real DeePMD-kit data in tests/data: counts, elements and labels equal to the source npy."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from lam.data.errors import DataError
from lam.data.formats import guess_format, read_any, read_ase, read_deepmd, write_deepmd, write_extxyz, write_h5
from lam.data.formats.ase_io import atoms_to_frame
from lam.data.frame import Frame


def _sets(system: Path) -> list[Path]:
    return sorted(p for p in system.glob("set.*") if p.is_dir())


def _npy(system_root: Path, name: str) -> np.ndarray:
    """Concatenate ``name.npy`` over all systems below ``system_root`` (sorted) and their sets (sorted)."""
    systems = sorted(p.parent for p in system_root.rglob("type.raw"))
    arrays = [np.load(s / f"{name}.npy") for sys in systems for s in _sets(sys)]
    return np.concatenate([a.reshape(a.shape[0], -1) for a in arrays])


def test_read_deepmd_water_tree_of_systems(water_dir: Path) -> None:
    frames = list(read_deepmd(water_dir))
    assert len(frames) == 400  # data_0 80 + data_1 (80 + 80) + data_2 80 + data_3 80
    assert {f.n_atoms for f in frames} == {192}
    numbers = frames[0].numbers
    assert np.sum(numbers == 8) == 64 and np.sum(numbers == 1) == 128
    assert all(f.pbc.all() for f in frames)
    np.testing.assert_array_equal([f.energy for f in frames], _npy(water_dir, "energy")[:, 0])
    np.testing.assert_array_equal(np.stack([f.forces.reshape(-1) for f in frames]), _npy(water_dir, "force"))
    np.testing.assert_array_equal(np.stack([f.positions.reshape(-1) for f in frames]), _npy(water_dir, "coord"))
    np.testing.assert_array_equal(np.stack([f.cell.reshape(-1) for f in frames]), _npy(water_dir, "box"))
    assert all(f.virial is None for f in frames)
    # type.raw order is kept: atom k has element type_map[type[k]]
    types = np.loadtxt(water_dir / "data_0" / "type.raw", dtype=int)
    np.testing.assert_array_equal(numbers, np.where(types == 0, 8, 1))


def test_read_deepmd_cho_nopbc_variable_sizes(cho_dir: Path) -> None:
    frames = list(read_deepmd(cho_dir))
    sizes = [f.n_atoms for f in frames]
    assert len(frames) == 2062
    assert sizes == [7] * 1562 + [10] * 485 + [8] * 15  # C1H4O2, C3H3O4, C4H3O1 (sorted system names)
    assert not any(f.pbc.any() for f in frames)
    assert all(np.all(f.cell == 0) for f in frames)
    # C3H3O4: 3 C, 3 H, 4 O
    np.testing.assert_array_equal(np.bincount(frames[1562].numbers, minlength=9)[[1, 6, 8]], [3, 3, 4])
    np.testing.assert_array_equal([f.energy for f in frames], _npy(cho_dir, "energy")[:, 0])
    forces = np.concatenate([f.forces.reshape(-1) for f in frames])
    source = [np.load(p).reshape(-1) for p in sorted(cho_dir.rglob("force.npy"))]
    np.testing.assert_array_equal(forces, np.concatenate(source))


def test_read_deepmd_gete_energy_column(gete_dir: Path) -> None:
    frames = list(read_deepmd(gete_dir))
    assert len(frames) == 36 and {f.n_atoms for f in frames} == {216}
    assert np.sum(frames[0].numbers == 32) == 108 and np.sum(frames[0].numbers == 52) == 108
    energy = np.load(gete_dir / "set.000" / "energy.npy")
    assert energy.shape == (36, 1)
    np.testing.assert_array_equal([f.energy for f in frames], energy[:, 0])
    np.testing.assert_allclose(np.diag(frames[0].cell), 18.582, atol=1e-3)


def test_read_deepmd_virial_and_single_system(water_virial_dir: Path) -> None:
    frames = list(read_deepmd(water_virial_dir))
    assert len(frames) == 30 and {f.n_atoms for f in frames} == {384}
    virial = np.load(water_virial_dir / "set.000" / "virial.npy")
    np.testing.assert_array_equal(np.stack([f.virial for f in frames]), virial.reshape(30, 3, 3))
    # the cell varies between frames in this set
    assert np.ptp([f.volume for f in frames]) > 1.0


def test_deepmd_missing_type_map_is_a_clear_error(gete_dir: Path, tmp_path: Path) -> None:
    system = tmp_path / "gete"
    shutil.copytree(gete_dir, system)
    (system / "type_map.raw").unlink()
    with pytest.raises(DataError, match="type_map.raw is missing") as info:
        next(read_deepmd(system))
    assert info.value.field == "type_map" and info.value.file == str(system)


def test_deepmd_round_trip(water_virial_dir: Path, tmp_path: Path) -> None:
    frames = list(read_deepmd(water_virial_dir))[:7]
    assert write_deepmd(tmp_path / "sys", frames, set_size=3) == 7
    assert len(list((tmp_path / "sys").glob("set.*"))) == 3
    back = list(read_deepmd(tmp_path / "sys"))
    for a, b in zip(frames, back, strict=True):
        np.testing.assert_array_equal(a.numbers, b.numbers)
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.virial, b.virial)
        assert a.energy == b.energy


def _assert_frames_close(a: Frame, b: Frame, atol: float = 1e-7) -> None:
    np.testing.assert_array_equal(a.numbers, b.numbers)
    np.testing.assert_allclose(a.positions, b.positions, atol=atol, rtol=0)
    np.testing.assert_allclose(a.cell, b.cell, atol=atol, rtol=0)
    np.testing.assert_array_equal(a.pbc, b.pbc)
    for name in ("energy", "forces", "virial"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_allclose(x, y, atol=atol, rtol=1e-12)


def test_extxyz_round_trip_mixed_periodicity_and_labels(water_virial_dir: Path, cho_dir: Path, tmp_path: Path) -> None:
    frames = list(read_deepmd(water_virial_dir))[:2] + list(read_deepmd(cho_dir))[1560:1564]
    frames[3].forces = None  # a frame without forces stays without forces
    path = tmp_path / "mixed.extxyz"
    assert write_extxyz(path, frames) == 6
    back = list(read_ase(path))
    assert len(back) == 6
    for a, b in zip(frames, back, strict=True):
        _assert_frames_close(a, b)
    assert back[0].virial is not None and back[2].virial is None and back[3].forces is None
    assert list(read_any(path)) and guess_format(path) == "ase"


def test_ase_stress_becomes_virial_with_the_right_sign(tmp_path: Path) -> None:
    """W = -dE/dstrain: check the converted ASE stress against a finite difference of EMT energies."""
    atoms = bulk("Cu", "fcc", a=3.55, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.calc = EMT()
    path = tmp_path / "cu.extxyz"
    atoms.get_potential_energy()
    atoms.get_stress()
    import ase.io

    ase.io.write(path, atoms)
    (frame,) = list(read_ase(path))
    h = 1e-5
    expected = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            energies = []
            for sign in (1, -1):
                eps = np.zeros((3, 3))
                eps[a, b] = eps[b, a] = sign * h
                strained = atoms.copy()
                strained.calc = EMT()
                strained.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
                energies.append(strained.get_potential_energy())
            # a symmetric off-diagonal strain moves both eps_ab and eps_ba: divide by 2 there
            expected[a, b] = -(energies[0] - energies[1]) / (2 * h) / (1 if a == b else 2)
    np.testing.assert_allclose(frame.virial, expected, atol=1e-5)
    assert abs(frame.virial).max() > 0.1  # compressed/rattled: a non-trivial virial


def test_read_ase_named_keys(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    atoms = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]], cell=np.eye(3) * 10, pbc=True)
    forces = rng.normal(size=(3, 3))
    stress6 = np.array([0.01, 0.02, 0.03, 0.004, 0.005, 0.006])
    atoms.info["REF_energy"] = -14.25
    atoms.info["REF_stress"] = stress6
    atoms.arrays["REF_forces"] = forces
    atoms.calc = SinglePointCalculator(atoms, energy=1.0)  # a different energy that must not be used
    frame = atoms_to_frame(atoms, energy_key="REF_energy", forces_key="REF_forces", stress_key="REF_stress")
    assert frame.energy == -14.25
    np.testing.assert_array_equal(frame.forces, forces)
    xx, yy, zz, yz, xz, xy = stress6
    np.testing.assert_allclose(frame.virial, -np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]]) * 1000.0)
    # via a file, and a key that a frame lacks is a clear error
    import ase.io

    path = tmp_path / "ref.extxyz"
    atoms.calc = None
    ase.io.write(path, [atoms, atoms])
    got = list(read_ase(path, energy_key="REF_energy", forces_key="REF_forces"))
    assert [f.energy for f in got] == [-14.25, -14.25]
    with pytest.raises(DataError, match="frame 0, field 'energy'.*'DFT_energy' not found"):
        list(read_ase(path, energy_key="DFT_energy"))
    assert len(list(read_ase(path, index="-1"))) == 1


def test_read_any_dispatch(water_virial_dir: Path, tmp_path: Path) -> None:
    assert guess_format(water_virial_dir) == "deepmd"
    h5 = tmp_path / "w.h5"
    write_h5(h5, read_deepmd(water_virial_dir, validate=False))
    assert guess_format(h5) == "lam-h5"
    via_h5 = list(read_any(h5))
    via_npy = list(read_any(water_virial_dir, format="deepmd"))
    assert len(via_h5) == len(via_npy) == 30
    np.testing.assert_array_equal(via_h5[-1].virial, via_npy[-1].virial)
    with pytest.raises(DataError, match="unknown format 'pdbx'"):
        read_any(h5, format="pdbx")
    with pytest.raises(DataError, match="apply to ASE-readable files only"):
        read_any(water_virial_dir, energy_key="REF_energy")
