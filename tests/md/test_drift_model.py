"""Stability of MD with lam potentials on liquid water (tests/data/deepmd_water_64h2o, 192 atoms, float64).

* NVE with the conservative forces -dE/dr conserves the total energy: drift < 0.1 meV/atom/ps over 20 fs;
  the same run with the direct-force head (not a gradient) drifts by orders of magnitude more.
* The force Jacobian of the conservative model is symmetric (it is minus the Hessian); the direct-force
  head's is not.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from lam import build_model
from lam.md.calculator import LAMCalculator
from lam.md.drift import jacobian_asymmetry
from lam.md.run import load_structure, run_md
from lam.models import Potential


def small_student(seed: int = 0) -> Potential:
    """A compact se_e2_a student with a direct-force head, float64 (a few ms per force call)."""
    return build_model("student", type_map=["O", "H"], heads=["water"], dtype="float64", seed=seed,
                       neurons=[8, 16, 32], axis_neuron=4, sel=48, rcut=4.0, rcut_smth=0.5,
                       fitting_neurons=[32, 32], direct_force={"rcut": 4.0, "hidden": 16, "num_basis": 4})


@pytest.fixture(scope="module")
def water(water_dir: Path) -> Atoms:
    return load_structure(water_dir / "data_0", index=0)


@pytest.fixture(scope="module")
def model() -> Potential:
    return small_student()


@pytest.fixture(scope="module")
def nve_conservative(model: Potential, water: Atoms):
    return run_md(model, water, ensemble="nve", dt=0.5, steps=40, temperature=300.0, seed=0, log_every=2,
                  progress=False)


def test_conservative_nve_drift_below_0p1_mev_per_atom_ps(nve_conservative) -> None:
    r = nve_conservative
    assert r.n_atoms == 192 and r.steps == 40 and len(r.times_fs) == 21
    assert np.isclose(r.times_fs[-1], 20.0)
    assert abs(r.drift_mev_atom_ps) < 0.1, r.summary()
    # energy really flows between kinetic and potential energy while Etot stays put
    assert np.ptp(r.epot_ev) > 20 * np.ptp(r.etot_ev)


def test_direct_forces_do_not_conserve_energy(model: Potential, water: Atoms, nve_conservative) -> None:
    r = run_md(model, water, ensemble="nve", dt=0.5, steps=30, temperature=300.0, seed=0, log_every=6,
               direct=True, progress=False)
    assert abs(r.drift_mev_atom_ps) > 1.0, r.summary()
    assert abs(r.drift_mev_atom_ps) > 100 * abs(nve_conservative.drift_mev_atom_ps)


def test_compressed_student_conserves_energy(water: Atoms) -> None:
    """Atoms of this random model come closer than 0.3 Å, inside the table's r_min (0.5 Å): the tabulated
    embedding must stay smooth and close to the network there (lam 0.1.0 extrapolated the last cubic and
    heated the box from 300 to 615 K in 30 fs)."""
    m = small_student()
    with torch.no_grad():
        m.heads["water"].scale.fill_(3.0)
    r = run_md(m, water, ensemble="nve", dt=0.5, steps=50, seed=0, log_every=5, progress=False, compress=True)
    assert abs(r.drift_mev_atom_ps) < 0.1, r.summary()
    assert np.all(np.abs(np.asarray(r.temperature_k) - 300.0) < 60.0), r.summary()


def _cluster(atoms: Atoms, n: int = 9) -> Atoms:
    """The ``n`` atoms nearest to atom 0 (minimum image), as a non-periodic cluster."""
    dist = atoms.get_distances(0, range(len(atoms)), mic=True)
    idx = np.argsort(dist)[:n]
    vec = atoms.get_distances(0, idx, mic=True, vector=True)
    return Atoms(numbers=atoms.numbers[idx], positions=vec + 6.0)


def test_jacobian_symmetric_for_conservative_not_for_direct(model: Potential, water: Atoms) -> None:
    cluster = _cluster(water)
    calc = LAMCalculator(model, compress=False)

    def forces_at(prop: str):
        def fn(pos: np.ndarray) -> np.ndarray:
            a = cluster.copy()
            a.positions = pos
            return calc.get_forces(a) if prop == "forces" else calc.get_property(prop, a)
        return fn

    lam_c = jacobian_asymmetry(forces_at("forces"), cluster.positions)
    lam_d = jacobian_asymmetry(forces_at("direct_forces"), cluster.positions)
    assert lam_c < 1e-6, lam_c
    assert lam_d > 1e-5 and lam_d > 1000 * lam_c, (lam_c, lam_d)


@pytest.mark.parametrize("ensemble", ["mts", "nve"])
def test_direct_forces_conserve_momentum_once_their_net_force_is_removed(water: Atoms, ensemble: str) -> None:
    pair = build_model("student", type_map=["O", "H"], heads=["water"], dtype="float64", seed=0,
                       neurons=[8, 16, 32], axis_neuron=4, sel=48, rcut=4.0, rcut_smth=0.5, fitting_neurons=[32, 32],
                       direct_force={"rcut": 4.0, "hidden": 16, "num_basis": 4, "kind": "pair"})
    kw = dict(ensemble=ensemble, dt=1.0, n_inner=2, steps=6) if ensemble == "mts" else dict(
        ensemble="nve", dt=0.5, steps=12, direct=True)
    raw = run_md(pair, water, seed=0, log_every=6, progress=False, zero_net_direct=False, **kw)
    fixed = run_md(pair, water, seed=0, log_every=6, progress=False, **kw)  # zero_net_direct=True by default
    # initial momenta sum to zero; -dE/dr keeps it so, the pair head's raw output does not (MTS cancels most of
    # it at the outer steps, direct-only MD none)
    assert np.linalg.norm(fixed.atoms.get_momenta().sum(0)) < 1e-11
    assert np.linalg.norm(raw.atoms.get_momenta().sum(0)) > (1e-8 if ensemble == "mts" else 1e-4)


def test_edge_direct_head_conserves_momentum_by_construction(model: Potential, water: Atoms) -> None:
    assert model.direct_force_head.kind == "edge"
    raw = run_md(model, water, seed=0, log_every=6, progress=False, zero_net_direct=False, ensemble="nve",
                 dt=0.5, steps=12, direct=True)
    assert np.linalg.norm(raw.atoms.get_momenta().sum(0)) < 1e-11


def test_direct_forces_in_single_precision_next_to_a_double_model(model: Potential, water: Atoms) -> None:
    """``direct_dtype=float32``: direct forces from a float32 copy (the cheap MTS inner force), energies and
    -dE/dr from the float64 model; the two precisions agree to float32 rounding."""
    exact = LAMCalculator(model, head="water", compress=False)
    mixed = LAMCalculator(model, head="water", compress=False, direct_dtype="float32")
    assert mixed.direct_model is not None and mixed.direct_model.dtype == torch.float32
    assert model.dtype == torch.float64  # the caller's model is not converted
    a = water.copy()
    exact.calculate(a, ["energy", "forces", "direct_forces"])
    mixed.calculate(a, ["energy", "forces", "direct_forces"])
    assert mixed.results["energy"] == exact.results["energy"]
    np.testing.assert_array_equal(mixed.results["forces"], exact.results["forces"])
    f64, f32 = exact.results["direct_forces"], mixed.results["direct_forces"]
    assert not np.array_equal(f32, f64)  # really computed in another precision
    np.testing.assert_allclose(f32, f64, atol=1e-5 * np.abs(f64).max())
    mixed.calculate(a, ["direct_forces"])  # the direct-only path uses the same float32 copy
    np.testing.assert_array_equal(mixed.results["direct_forces"], f32)
    r = run_md(model, water, ensemble="mts", dt=2.0, n_inner=4, steps=5, seed=0, progress=False,
               direct_dtype="float32")
    assert r.force_calls == {"conservative": 6, "direct": 21} and np.all(np.isfinite(r.etot_ev))
    with pytest.raises(ValueError, match="direct_dtype"):
        LAMCalculator(model, head="water", direct_dtype="int32")


def test_distill_direct_head_fits_the_models_own_forces_with_displaced_copies(water: Atoms) -> None:
    from lam.md.hybrid import distill_direct_head

    model = small_student(seed=4)
    calc = LAMCalculator(model)

    def gap(atoms_list: list[Atoms]) -> float:
        sq = []
        for a in atoms_list:
            calc.calculate(a.copy(), ["energy", "forces", "direct_forces"])
            sq.append(np.mean((calc.results["forces"] - calc.results["direct_forces"]) ** 2))
        return float(np.sqrt(np.mean(sq)))

    rng = np.random.default_rng(3)
    fit = [water]
    check = []
    for _ in range(2):  # held-out configurations near the fitted one
        a = water.copy()
        a.positions += rng.normal(0.0, 0.05, a.positions.shape)
        check.append(a)
    before = gap(check)
    final = distill_direct_head(model, fit, steps=150, lr=1e-2, noise=0.05, copies=3)
    after = gap(check)
    assert np.isfinite(final) and after < 0.7 * before, (before, after)
    with pytest.raises(ValueError, match="noise and copies"):
        distill_direct_head(model, fit, steps=1, noise=-0.1, copies=1)
