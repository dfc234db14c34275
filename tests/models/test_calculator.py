"""LAMCalculator: ASE units and signs, stress vs numerical stress, committee deviation, MD on real water."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.calculators.calculator import PropertyNotImplementedError
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet

from lam import LAMCalculator, build_model

WATER = Path(__file__).resolve().parents[1] / "data" / "deepmd_water_64h2o" / "data_0"

torch.set_num_threads(1)  # 2 threads on the shared 2-core CI machine are 15-30x slower


def load_water(frame: int = 0) -> Atoms:
    """One frame of the DeePMD-kit 64-H2O liquid water box (192 atoms), read straight from the npy files."""
    type_map = (WATER / "type_map.raw").read_text().split()
    types = np.loadtxt(WATER / "type.raw", dtype=int)
    coord = np.load(WATER / "set.000" / "coord.npy")[frame].reshape(-1, 3)
    box = np.load(WATER / "set.000" / "box.npy")[frame].reshape(3, 3)
    return Atoms([type_map[t] for t in types], positions=coord, cell=box, pbc=True)


@pytest.fixture(scope="module")
def water() -> Atoms:
    return load_water()


def small_water(water: Atoms, n_molecules: int = 8) -> Atoms:
    """The first molecules of the box in a shrunken periodic cell (a cheap, dense-enough test system)."""
    o = np.where(water.numbers == 8)[0][:n_molecules]
    idx = []
    hs = np.where(water.numbers == 1)[0]
    for oi in o:
        d = water.get_distances(oi, hs, mic=True)
        idx += [oi, *hs[np.argsort(d)[:2]]]
    sub = water[idx]
    sub.set_cell(np.diag([6.2, 6.0, 5.8]) + 0.2 * np.tri(3, k=-1), scale_atoms=False)
    sub.wrap()
    return sub


def test_stress_matches_ase_numerical_stress(water: Atoms) -> None:
    model = build_model("student", type_map=["H", "O"], dtype=torch.float64, seed=1)
    atoms = water.copy()  # the full 192-atom box
    atoms.calc = LAMCalculator(model)
    stress = atoms.get_stress()
    assert stress.shape == (6,)
    numerical = atoms.calc.calculate_numerical_stress(atoms, d=1e-5)
    np.testing.assert_allclose(stress, numerical, rtol=1e-6, atol=1e-9 * np.abs(numerical).max())
    assert np.abs(stress).max() > 0
    full = atoms.get_stress(voigt=False)
    np.testing.assert_allclose(full, full.T)


def test_energy_forces_and_free_energy(water: Atoms) -> None:
    model = build_model("student", type_map=["H", "O"], dtype=torch.float64, seed=1)
    model.set_element_energies("default", {"H": -13.6, "O": -432.0})
    atoms = small_water(water)
    atoms.calc = LAMCalculator(model)
    e = atoms.get_potential_energy()
    assert atoms.get_potential_energy(force_consistent=True) == e
    np.testing.assert_allclose(atoms.get_potential_energies().sum(), e, rtol=1e-12)
    assert e == pytest.approx(8 * (-432.0 - 2 * 13.6), rel=0.05)  # the references dominate a random model
    f = atoms.get_forces()
    assert f.shape == (24, 3) and np.all(np.isfinite(f))
    # finite difference of one force component through ASE
    pos = atoms.positions.copy()
    h = 1e-4
    atoms.positions[5, 2] = pos[5, 2] + h
    ep = atoms.get_potential_energy()
    atoms.positions[5, 2] = pos[5, 2] - h
    em = atoms.get_potential_energy()
    assert -(ep - em) / (2 * h) == pytest.approx(f[5, 2], rel=1e-5, abs=1e-9)  # E ~ -3.6 keV: roundoff


def test_stress_needs_a_periodic_cell() -> None:
    model = build_model("student", type_map=["H", "O"], dtype=torch.float64)
    atoms = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    atoms.calc = LAMCalculator(model)
    assert np.isfinite(atoms.get_potential_energy())
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


def test_head_selection_and_errors() -> None:
    model = build_model("student", type_map=["H", "O"], heads=["pbe", "rpbe"], dtype=torch.float64)
    with pytest.raises(ValueError, match="pass head"):
        LAMCalculator(model)
    with pytest.raises(ValueError, match="no head 'b3lyp'"):
        LAMCalculator(model, head="b3lyp")
    model.set_element_energies("rpbe", {"H": -1.0})
    atoms = Atoms("H", positions=[[0, 0, 0]])
    atoms.calc = LAMCalculator(model, head="rpbe")
    assert atoms.get_potential_energy() == pytest.approx(-1.0, abs=1e-12)
    atoms = Atoms("N", positions=[[0, 0, 0]])
    atoms.calc = LAMCalculator(model, head="pbe")
    with pytest.raises(ValueError, match=r"\['N'\] not in the model's type map"):
        atoms.get_potential_energy()


def test_committee_deviation(water: Atoms) -> None:
    members = [build_model("student", type_map=["H", "O"], dtype=torch.float64, seed=s) for s in range(3)]
    atoms = small_water(water)
    calc = LAMCalculator(members[0], committee=members)
    atoms.calc = calc
    forces = atoms.get_forces()
    stacked = []
    for m in members:
        atoms.calc = LAMCalculator(m)
        stacked.append(atoms.get_forces())
    stacked = np.stack(stacked)
    np.testing.assert_allclose(forces, stacked[0])
    expected = np.sqrt(((stacked - stacked.mean(0)) ** 2).sum(-1).mean(0))
    atoms.calc = calc
    calc.calculate(atoms, ["energy", "forces"])
    np.testing.assert_allclose(calc.results["forces_std"], expected, rtol=1e-10)
    assert calc.results["max_force_std"] == pytest.approx(expected.max())
    assert calc.results["energy_std"] > 0
    # the model is counted once whether or not it is listed in the committee
    calc2 = LAMCalculator(members[0], committee=members[1:])
    calc2.calculate(atoms, ["energy", "forces"])
    np.testing.assert_allclose(calc2.results["forces_std"], expected, rtol=1e-10)


def test_velocity_verlet_on_real_water(water: Atoms) -> None:
    model = build_model("student", type_map=["H", "O"], dtype=torch.float32, seed=0)
    atoms = water.copy()
    atoms.calc = LAMCalculator(model)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    energies = []
    dyn.attach(lambda: energies.append(atoms.get_total_energy()), interval=10)
    dyn.run(100)
    assert dyn.nsteps == 100
    assert len(energies) == 11 and np.all(np.isfinite(energies))
    assert np.isfinite(atoms.get_stress()).all()


@pytest.mark.parametrize("preset", ["student", "small"])
def test_verlet_skin_gives_the_same_trajectory(water: Atoms, preset: str) -> None:
    """A skin reuses the neighbour list over MD steps without changing a single result: the same 30 steps with
    skin 0 (search every call) and skin 0.8 Å give equal energies, forces and stress, with few searches."""
    model = build_model(preset, type_map=["H", "O"], dtype=torch.float64, seed=3)
    runs = {}
    for skin in (0.0, 0.8):
        atoms = small_water(water, 8) if preset == "small" else water.copy()
        atoms.calc = LAMCalculator(model, skin=skin)
        MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(1))
        dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
        record = []
        dyn.attach(lambda a=atoms, r=record: r.append((a.get_potential_energy(), a.get_forces().copy(),
                                                        a.get_stress().copy())), interval=1)
        dyn.run(30)
        runs[skin] = (record, atoms.calc.neighbor_list(model.rcut))
    (ref, plain), (got, verlet) = runs[0.0], runs[0.8]
    assert plain.n_searches == plain.n_calls
    assert 1 <= verlet.n_searches <= verlet.n_calls // 3
    for (e0, f0, s0), (e1, f1, s1) in zip(ref, got, strict=True):
        assert e1 == pytest.approx(e0, rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(f1, f0, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(s1, s0, rtol=1e-10, atol=1e-12)


def test_check_state_sees_every_input_the_model_reads(water: Atoms) -> None:
    model = build_model("student", type_map=["H", "O"], dtype=torch.float64, seed=2)
    atoms = small_water(water, 4)
    calc = LAMCalculator(model)
    atoms.calc = calc
    e0 = atoms.get_potential_energy()
    assert calc.check_state(atoms) == []
    atoms.set_initial_charges(np.ones(len(atoms)))  # not a model input: no recalculation
    assert calc.check_state(atoms) == [] and atoms.get_potential_energy() == e0
    changed = atoms.copy()
    changed.positions[0, 0] += 1e-9
    assert calc.check_state(changed) == ["positions"]
    changed = atoms.copy()
    changed.numbers[[0, 1]] = changed.numbers[[1, 0]]
    assert calc.check_state(changed) == ["numbers"]
    changed = atoms.copy()
    changed.pbc = [True, True, False]
    assert calc.check_state(changed) == ["pbc"]
    changed = atoms.copy()
    changed.set_cell(changed.cell.array * 1.01, scale_atoms=False)
    assert calc.check_state(changed) == ["cell"]
    assert calc.check_state(atoms[:-1]) == ["positions", "numbers"]
    swapped = atoms.copy()
    swapped.numbers[[0, 1]] = swapped.numbers[[1, 0]]
    swapped.calc = calc
    assert swapped.get_potential_energy() != pytest.approx(e0, rel=1e-9)
