"""Energy-conservation diagnostics: drift of the conserved energy and Jacobian asymmetry of a force field."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def energy_drift(times_fs: np.ndarray, total_energy_ev: np.ndarray, n_atoms: int) -> float:
    """Slope of the conserved energy by least squares, in meV/atom/ps (signed)."""
    t = np.asarray(times_fs, dtype=np.float64) / 1000.0  # ps
    e = np.asarray(total_energy_ev, dtype=np.float64) * 1000.0 / n_atoms  # meV/atom
    if t.size < 2:
        raise ValueError("energy_drift needs at least two samples")
    slope = np.polyfit(t - t.mean(), e, 1)[0]
    return float(slope)


def jacobian_asymmetry(forces_fn: Callable[[np.ndarray], np.ndarray], positions: np.ndarray,
                       eps: float = 1e-4) -> float:
    """λ = ‖(J − Jᵀ)/2‖_F / ‖J‖_F for J = ∂F/∂r by central differences (6N force calls).

    A conservative force is the negative gradient of a scalar, so its Jacobian (minus the Hessian) is symmetric
    and λ ≈ 0 up to finite-difference error; a force with a curl gives λ > 0.
    """
    x0 = np.asarray(positions, dtype=np.float64).reshape(-1)
    n = x0.size
    jac = np.empty((n, n))
    for k in range(n):
        xp, xm = x0.copy(), x0.copy()
        xp[k] += eps
        xm[k] -= eps
        fp = np.asarray(forces_fn(xp.reshape(-1, 3)), dtype=np.float64).reshape(-1)
        fm = np.asarray(forces_fn(xm.reshape(-1, 3)), dtype=np.float64).reshape(-1)
        jac[:, k] = (fp - fm) / (2 * eps)
    norm = np.linalg.norm(jac)
    if norm == 0:
        return 0.0
    return float(np.linalg.norm(0.5 * (jac - jac.T)) / norm)


def energy_drift_with_error(times_fs: np.ndarray, total_energy_ev: np.ndarray, n_atoms: int,
                            n_blocks: int = 10) -> tuple[float, float]:
    """Drift (meV/atom/ps, signed) and its standard error, from a line fitted to block means.

    The run is cut into ``n_blocks`` contiguous blocks of (nearly) equal sample counts; the mean time and mean
    energy of each block are fitted by least squares. Block means of blocks much longer than the correlation
    time of the energy fluctuations are nearly independent, so the ordinary standard error of that fit's slope
    (``n_blocks - 2`` degrees of freedom) is a fair uncertainty, unlike the standard error of a fit to all the
    correlated samples, which is far too small. Needs at least ``3 * n_blocks`` samples and ``n_blocks >= 3``.
    """
    t = np.asarray(times_fs, dtype=np.float64) / 1000.0  # ps
    e = np.asarray(total_energy_ev, dtype=np.float64) * 1000.0 / n_atoms  # meV/atom
    if n_blocks < 3:
        raise ValueError(f"n_blocks must be >= 3, got {n_blocks}")
    if t.size != e.size or t.size < 3 * n_blocks:
        raise ValueError(f"need at least {3 * n_blocks} samples for {n_blocks} blocks, got {t.size}")
    bounds = np.linspace(0, t.size, n_blocks + 1).round().astype(int)
    tb = np.array([t[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:])])
    eb = np.array([e[a:b].mean() for a, b in zip(bounds[:-1], bounds[1:])])
    tc = tb - tb.mean()
    sxx = float(np.sum(tc**2))
    slope = float(np.sum(tc * (eb - eb.mean())) / sxx)
    resid = eb - eb.mean() - slope * tc
    stderr = float(np.sqrt(np.sum(resid**2) / (n_blocks - 2) / sxx))
    return slope, stderr
