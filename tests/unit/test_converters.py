"""Converters for the big public datasets, on tiny samples written in each upstream layout."""

from __future__ import annotations

import importlib.util
import json
import lzma
import sys
from pathlib import Path
from types import ModuleType

import ase.io
import h5py
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.units import Bohr, GPa, Hartree

from lam.data.errors import DataError
from lam.data.formats.h5 import H5Reader

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _water(rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    base = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    return (base + rng.normal(0, 0.02, base.shape)) * scale


def test_ani1x(tmp_path: Path) -> None:
    conv = _load("convert_ani1x")
    rng = np.random.default_rng(0)
    src = tmp_path / "ani1x-release.h5"
    e_ha = np.array([-76.40, -76.41, np.nan, -76.39])
    f_ha = rng.normal(0, 0.01, (4, 3, 3))
    f_ha[3, 1, 2] = np.nan  # forces missing for this conformer
    with h5py.File(src, "w") as h5:
        g = h5.create_group("H2O1")
        g["atomic_numbers"] = np.array([8, 1, 1], dtype=np.uint8)
        g["coordinates"] = np.stack([_water(rng) for _ in range(4)]).astype(np.float32)
        g["wb97x_dz.energy"] = e_ha
        g["wb97x_dz.forces"] = f_ha
        g["ccsd(t)_cbs.energy"] = np.full(4, np.nan)
        g2 = h5.create_group("C1H4")
        g2["atomic_numbers"] = np.array([6, 1, 1, 1, 1])
        g2["coordinates"] = rng.normal(0, 1, (2, 5, 3))
        g2["wb97x_dz.energy"] = np.array([-40.5, -40.49])
        g2["wb97x_dz.forces"] = rng.normal(0, 0.01, (2, 5, 3))
    dst = tmp_path / "ani.h5"
    assert conv.main([str(src), str(dst)]) == 0
    r = H5Reader(dst)
    assert len(r) == 4  # 2 methane + 2 valid water (one NaN energy, one NaN force skipped)
    assert r.attrs["functional"] == "wB97x/6-31G(d)" and r.attrs["head"] == "ani1x_wb97x"
    # groups are sorted: C1H4 first, then H2O1
    assert r[0].numbers.tolist() == [6, 1, 1, 1, 1]
    w = r[2]
    assert w.energy == pytest.approx(-76.40 * Hartree, rel=1e-12)
    np.testing.assert_allclose(w.forces, f_ha[0] * Hartree, rtol=1e-12)
    with h5py.File(src) as h5:
        np.testing.assert_allclose(w.positions, h5["H2O1/coordinates"][0], rtol=1e-6)  # Å stays Å
    counters: dict[str, int] = {}
    assert len(list(conv.iter_ani1x(str(src), None, counters))) == 4 and counters["skipped_nan"] == 2
    assert len(list(conv.iter_ani1x(str(src), limit=3))) == 3


def test_spice(tmp_path: Path) -> None:
    conv = _load("convert_spice")
    rng = np.random.default_rng(1)
    src = tmp_path / "SPICE.hdf5"
    pos_bohr = np.stack([_water(rng) for _ in range(3)]) / Bohr
    grad = rng.normal(0, 0.02, (3, 3, 3))
    with h5py.File(src, "w") as h5:
        g = h5.create_group("water")
        g["atomic_numbers"] = np.array([8, 1, 1], dtype=np.int16)
        g["conformations"] = pos_bohr
        g["dft_total_energy"] = np.array([-76.4, -76.41, -76.39])
        g["dft_total_gradient"] = grad
        g["smiles"] = np.array([b"[H]O[H]"])
        g["mbis_charges"] = np.zeros((3, 3, 1))
        ion = h5.create_group("chloride")
        ion["atomic_numbers"] = np.array([17])
        ion["conformations"] = np.zeros((1, 1, 3))
        ion["dft_total_energy"] = np.array([-460.3])
        ion["dft_total_gradient"] = np.zeros((1, 1, 3))
        ion["mbis_charges"] = np.full((1, 1, 1), -1.0)
    dst = tmp_path / "spice.h5"
    assert conv.main([str(src), str(dst)]) == 0
    r = H5Reader(dst)
    assert len(r) == 4 and r.attrs["functional"] == "wB97M-D3(BJ)/def2-TZVPPD"
    w = r[1]  # sorted groups: chloride, water
    np.testing.assert_allclose(w.positions, pos_bohr[0] * Bohr, rtol=1e-12)
    np.testing.assert_allclose(w.forces, -grad[0] * Hartree / Bohr, rtol=1e-12)  # forces = -gradient
    assert w.energy == pytest.approx(-76.4 * Hartree)
    # O-H bond length is physical after the bohr → Å conversion
    assert 0.9 < np.linalg.norm(w.positions[1] - w.positions[0]) < 1.05
    counters: dict[str, int] = {}
    frames = list(conv.iter_spice(str(src), None, counters, neutral_only=True))
    assert len(frames) == 3 and counters["skipped_charged"] == 1


def _pmg_structure(numbers: list[str], cart: np.ndarray, cell: np.ndarray, use_abc: bool = False) -> dict:
    sites = []
    for sym, xyz in zip(numbers, cart):
        site = {"species": [{"element": sym, "occu": 1}], "label": sym, "properties": {"magmom": 0.0}}
        abc = np.linalg.solve(cell.T, xyz)
        site["abc"] = abc.tolist()
        if not use_abc:
            site["xyz"] = xyz.tolist()
        sites.append(site)
    return {"@module": "pymatgen.core.structure", "@class": "Structure", "charge": 0,
            "lattice": {"matrix": cell.tolist(), "pbc": [True, True, True], "a": 1.0}, "properties": {},
            "sites": sites}


def test_mptrj(tmp_path: Path) -> None:
    conv = _load("convert_mptrj")
    cell = np.array([[4.0, 0.0, 0.0], [0.5, 4.2, 0.0], [0.0, 0.3, 5.0]])
    cart = np.array([[0.1, 0.2, 0.3], [2.0, 2.1, 2.4]])
    stress_kbar = np.array([[-12.5, 1.0, 0.0], [1.0, -8.0, 0.5], [0.0, 0.5, 3.0]])
    rec = {
        "structure": _pmg_structure(["Na", "Cl"], cart, cell),
        "uncorrected_total_energy": -6.5, "corrected_total_energy": -6.9, "energy_per_atom": -3.45,
        "force": [[0.1, -0.2, 0.0], [-0.1, 0.2, 0.0]], "stress": stress_kbar.tolist(), "magmom": None,
    }
    data = {
        "mp-22862": {"mp-22862-0-0": rec, "mp-22862-0-1": {**rec, "stress": None,
                                                          "structure": _pmg_structure(["Na", "Cl"], cart, cell,
                                                                                      use_abc=True)}},
        "mp-1": {"mp-1-1-3": {**rec, "corrected_total_energy": -7.0}},
    }
    src = tmp_path / "MPtrj.json"
    src.write_text(json.dumps(data, indent=1))
    # the streaming top-level parser gives the same as json.load, even with tiny read blocks
    assert dict(conv.iter_top_level_items(str(src), block=5)) == data
    dst = tmp_path / "mptrj.h5"
    assert conv.main([str(src), str(dst)]) == 0
    r = H5Reader(dst)
    assert len(r) == 3 and r.attrs["functional"] == "PBE/PBE+U"
    f0, f1, f2 = r[0], r[1], r[2]
    assert f0.numbers.tolist() == [11, 17] and f0.pbc.all()
    np.testing.assert_allclose(f0.cell, cell)
    np.testing.assert_allclose(f0.positions, cart, atol=1e-12)
    np.testing.assert_allclose(f1.positions, cart, atol=1e-12)  # from fractional abc
    assert f0.energy == pytest.approx(-6.9) and f2.energy == pytest.approx(-7.0)
    # virial W = -σ_ASE·V with σ_ASE = -0.1 GPa·s_kBar  →  a compressive VASP stress (>0) gives W > 0
    vol = abs(np.linalg.det(cell))
    np.testing.assert_allclose(f0.virial, stress_kbar * 0.1 * GPa * vol, rtol=1e-10)
    assert f0.virial[0, 0] < 0  # -12.5 kBar (tensile in VASP's sign) → negative virial
    assert f1.virial is None
    unc = list(conv.iter_mptrj(str(src), energy="uncorrected"))
    assert [f.energy for f in unc] == [-6.5, -6.5, -6.5]
    bad = {"mp-x": {"f": {**rec, "structure": {**rec["structure"], "sites": [
        {"species": [{"element": "Na", "occu": 0.5}, {"element": "K", "occu": 0.5}], "xyz": [0, 0, 0]}]}}}}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"mp-x/f.*disordered"):
        list(conv.iter_mptrj(str(tmp_path / "bad.json")))


def test_oc20(tmp_path: Path) -> None:
    conv = _load("convert_oc20")
    rng = np.random.default_rng(2)
    src = tmp_path / "s2ef"
    src.mkdir()
    expected = []
    for k, compress in ((0, True), (1, False)):
        frames, lines = [], []
        for j in range(3):
            atoms = Atoms("Cu4CO", positions=rng.uniform(0, 6, (6, 3)), cell=[7.2, 7.2, 20.0], pbc=True)
            e, f = -50.0 - k - 0.1 * j, rng.normal(0, 0.3, (6, 3))
            atoms.calc = SinglePointCalculator(atoms, energy=e, free_energy=e, forces=f)
            frames.append(atoms)
            ref = -48.0 - 0.01 * j
            lines.append(f"random{1000 + k},frame{j},{ref}\n")
            expected.append((e, ref, f))
        if compress:
            with lzma.open(src / f"{k}.extxyz.xz", "wt") as fh:
                ase.io.write(fh, frames, format="extxyz")
            with lzma.open(src / f"{k}.txt.xz", "wt") as fh:
                fh.writelines(lines)
        else:
            ase.io.write(src / f"{k}.extxyz", frames, format="extxyz")
            (src / f"{k}.txt").write_text("".join(lines))
    dst = tmp_path / "oc20.h5"
    assert conv.main([str(src), str(dst)]) == 0
    r = H5Reader(dst)
    assert len(r) == 6 and r.attrs["functional"] == "RPBE"
    for i, (e, _, f) in enumerate(expected):
        assert r[i].energy == pytest.approx(e, abs=1e-6)  # total energy kept by default
        np.testing.assert_allclose(r[i].forces, f, atol=1e-6)
        assert r[i].pbc.all() and r[i].cell[2, 2] == pytest.approx(20.0)
    ref = list(conv.iter_oc20(src, energy="referenced"))
    assert [fr.energy for fr in ref] == pytest.approx([e - rf for e, rf, _ in expected], abs=1e-6)
    assert len(list(conv.iter_oc20(src, limit=4))) == 4
    (src / "1.txt").write_text("random1001,frame0,-48.0\n")  # metadata shorter than the trajectory
    with pytest.raises(DataError, match="more frames than lines in 1.txt"):
        list(conv.iter_oc20(src))
