"""r-RESPA multiple time stepping and energy-conservation diagnostics on a real (EMT) force field."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet

from lam.md.drift import energy_drift, energy_drift_with_error, jacobian_asymmetry
from lam.md.integrators import MultipleTimeStepVerlet, calculator_forces, without_net_force


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


def _wavy_forces(calc: EMT, strength: float):
    """EMT forces plus a position-dependent push along x, F_x += s exp(sin(2 pi x / L)): its net force is not
    zero and changes as the atoms move."""

    def fn(atoms):
        forces = calc.get_forces(atoms).copy()
        forces[:, 0] += strength * np.exp(np.sin(2 * np.pi * atoms.positions[:, 0] / atoms.cell[0, 0] + 0.3))
        return forces

    return fn


@pytest.mark.parametrize("m", [1, 4])
def test_removing_the_net_fast_force_conserves_momentum(m: int) -> None:
    calc = EMT()
    fast = _wavy_forces(calc, 0.2)
    p_start = _copper().get_momenta().sum(0)
    raw, fixed = _copper(), _copper()
    assert np.linalg.norm(fast(raw).sum(0)) > 0.05  # the biased force really has a net force
    MultipleTimeStepVerlet(raw, m * units.fs, m, fast, calculator_forces(calc) if m > 1 else fast).run(40)
    MultipleTimeStepVerlet(fixed, m * units.fs, m, without_net_force(fast),
                           calculator_forces(calc) if m > 1 else without_net_force(fast)).run(40)
    np.testing.assert_allclose(fixed.get_momenta().sum(0), p_start, atol=1e-9)
    assert np.linalg.norm(raw.get_momenta().sum(0) - p_start) > 1e-4


def test_removing_the_net_force_never_moves_direct_forces_away_from_zero_sum_forces() -> None:
    rng = np.random.default_rng(0)
    atoms = _copper()
    for _ in range(20):
        f_c = rng.normal(size=(len(atoms), 3))
        f_c -= f_c.mean(0)
        f_nc = f_c + rng.normal(size=f_c.shape) + rng.normal(size=3)
        projected = without_net_force(lambda _a, f=f_nc: f)(atoms)
        np.testing.assert_allclose(projected.sum(0), 0.0, atol=1e-12)
        assert np.linalg.norm(projected - f_c) <= np.linalg.norm(f_nc - f_c)


def _ar1(rng: np.random.Generator, n: int, corr: int, sigma: float) -> np.ndarray:
    """Stationary AR(1) noise with correlation time ``corr`` samples and standard deviation ``sigma``."""
    phi = np.exp(-1.0 / corr)
    x = np.empty(n)
    x[0] = rng.normal() * sigma
    for k in range(1, n):
        x[k] = phi * x[k - 1] + rng.normal() * sigma * np.sqrt(1 - phi**2)
    return x


def test_drift_standard_error_covers_the_true_slope() -> None:
    """Correlated noise on a known slope: the block-mean standard error gives ~95% coverage at 2 SE, where the
    naive standard error of a fit to all samples (treating them as independent) is far too small."""
    rng = np.random.default_rng(1)
    n_atoms, true = 10, 0.5  # meV/atom/ps
    t = np.arange(1000) * 4.0  # fs: 4 ps sampled every 4 fs
    hits, naive_hits, errs = 0, 0, []
    trials = 200
    for _ in range(trials):
        e_mev = true * t / 1000.0 + _ar1(rng, t.size, corr=15, sigma=2.0)
        e_ev = e_mev * n_atoms / 1000.0
        slope, err = energy_drift_with_error(t, e_ev, n_atoms, n_blocks=10)
        assert np.isclose(slope, energy_drift(t, e_ev, n_atoms), rtol=0.5, atol=3 * err)
        hits += abs(slope - true) <= 2 * err
        errs.append(err)
        tc = t / 1000.0 - t.mean() / 1000.0
        fit = np.polyfit(tc, e_mev, 1)
        naive = np.sqrt(np.sum((e_mev - np.polyval(fit, tc)) ** 2) / (t.size - 2) / np.sum(tc**2))
        naive_hits += abs(fit[0] - true) <= 2 * naive
    assert 0.85 * trials <= hits <= 0.995 * trials, hits
    assert naive_hits < 0.75 * trials, naive_hits  # why the block means are needed
    assert np.median(errs) < 0.5  # and the error bar is still informative


def test_drift_with_error_exact_line_and_bad_input() -> None:
    t = np.linspace(0, 1000, 60)
    slope, err = energy_drift_with_error(t, 0.003 * t / 1000 * 5, 5, n_blocks=6)  # 3 meV/atom/ps
    assert np.isclose(slope, 3.0) and err < 1e-9
    with pytest.raises(ValueError, match="samples"):
        energy_drift_with_error(t[:10], t[:10], 5, n_blocks=6)
    with pytest.raises(ValueError, match="n_blocks"):
        energy_drift_with_error(t, t, 5, n_blocks=2)
