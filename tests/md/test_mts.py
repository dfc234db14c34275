"""r-RESPA multiple time stepping and energy-conservation diagnostics on a real (EMT) force field."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet

from lam.md.drift import energy_drift, jacobian_asymmetry
from lam.md.integrators import MultipleTimeStepVerlet, calculator_forces


def _copper(seed: int = 0):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    thermalize_momenta(atoms, temperature_K=600, rng=np.random.default_rng(seed))
    atoms.calc = EMT()
    return atoms


def _curl_forces(calc: EMT, strength: float):
    """EMT forces plus a rotational field about the cell centre: F += s * ẑ × (r − c) (non-conservative)."""

    def fn(atoms):
        forces = calc.get_forces(atoms)
        centre = atoms.cell.array.sum(axis=0) / 2
        rel = atoms.positions - centre
        curl = strength * np.stack([-rel[:, 1], rel[:, 0], np.zeros(len(atoms))], axis=1)
        return forces + curl

    return fn


@pytest.mark.parametrize("m", [1, 4])
def test_mts_with_equal_forces_is_velocity_verlet_at_dt_over_m(m: int) -> None:
    dt = 4.0 * units.fs
    a, b = _copper(), _copper()
    calc = EMT()
    mts = MultipleTimeStepVerlet(a, dt, m, fast_forces=calculator_forces(calc),
                                 slow_forces=calculator_forces(calc))
    mts.run(5)
    VelocityVerlet(b, dt / m).run(5 * m)
    np.testing.assert_allclose(a.positions, b.positions, atol=1e-10)
    np.testing.assert_allclose(a.get_momenta(), b.get_momenta(), atol=1e-10)


def test_force_call_counts_one_conservative_per_m_inner_steps() -> None:
    atoms = _copper()
    calc = EMT()
    mts = MultipleTimeStepVerlet(atoms, 2 * units.fs, 8, fast_forces=calculator_forces(calc),
                                 slow_forces=calculator_forces(calc))
    mts.run(10)
    assert mts.slow_calls == 10 + 1  # one per outer step plus the initial evaluation
    assert mts.fast_calls == 10 * 8 + 1


def _nve_drift(atoms, dyn, steps: int) -> float:
    times, energies = [], []

    def record() -> None:
        times.append(dyn.get_time() / units.fs)
        energies.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())

    dyn.attach(record, interval=5)
    dyn.run(steps)
    return energy_drift(np.array(times), np.array(energies), len(atoms))


def test_drift_metric_flags_a_non_conservative_force() -> None:
    clean = _copper()
    drift_clean = _nve_drift(clean, VelocityVerlet(clean, 2 * units.fs), 200)
    curly = _copper()
    calc = EMT()
    mts = MultipleTimeStepVerlet(curly, 2 * units.fs, 1, fast_forces=_curl_forces(calc, 0.05),
                                 slow_forces=_curl_forces(calc, 0.05))
    drift_curl = _nve_drift(curly, mts, 200)
    assert abs(drift_clean) < 1.0  # meV/atom/ps: EMT with velocity Verlet conserves energy
    assert abs(drift_curl) > 20 * max(abs(drift_clean), 0.05)


def test_mts_corrects_a_biased_fast_force() -> None:
    """Fast forces with a curl, conservative correction every M steps: much smaller drift than the fast force alone."""
    calc = EMT()
    fast = _curl_forces(calc, 0.05)
    a = _copper()
    drift_direct = _nve_drift(a, MultipleTimeStepVerlet(a, 1 * units.fs, 1, fast, fast), 200)
    b = _copper()
    drift_mts = _nve_drift(b, MultipleTimeStepVerlet(b, 4 * units.fs, 4, fast, calculator_forces(calc)), 50)
    assert abs(drift_mts) < 0.2 * abs(drift_direct)


def test_jacobian_asymmetry_zero_for_conservative_positive_for_curl() -> None:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.05, seed=1)
    calc = EMT()

    def conservative(pos):
        at = atoms.copy()
        at.positions = pos
        return calc.get_forces(at)

    def curly(pos):
        at = atoms.copy()
        at.positions = pos
        return _curl_forces(calc, 0.5)(at)

    assert jacobian_asymmetry(conservative, atoms.positions) < 1e-5
    assert jacobian_asymmetry(curly, atoms.positions) > 1e-2
