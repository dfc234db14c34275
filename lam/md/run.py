"""Run molecular dynamics with a :class:`~lam.models.Potential`: NVE, NVT (Bussi) or multiple time stepping.

:func:`run_md` is the library function behind ``python -m lam.md``. It writes an ASE trajectory
(``md.traj``) and a CSV log (``md.csv``: step, time, Epot, Ekin, Etot, T and the conserved energy) and returns
an :class:`MDResult` with the drift of the conserved energy in meV/atom/ps:

* ``nve``: velocity Verlet with the conservative forces ``-dE/dr``; conserved energy ``Etot``.
* ``nvt``: Bussi stochastic velocity rescaling; conserved energy ``Etot - W`` where ``W`` is the energy the
  thermostat has put into the system so far (its accumulated work), so the drift measures the integrator only.
* ``mts``: r-RESPA (:class:`~lam.md.integrators.MultipleTimeStepVerlet`): ``n_inner`` inner steps of
  ``dt / n_inner`` with the model's direct-force head, corrected by the conservative forces once per outer
  step ``dt``; conserved energy ``Etot``. ``steps`` counts outer steps. ``inner="frozen"`` runs the inner
  steps on frozen descriptor features (the head alone, no descriptor pass), refreshed from the conservative
  evaluation every ``refresh_every`` outer steps.

``direct=True`` with ``nve``/``nvt`` integrates with the direct forces alone (for comparisons; such forces
are not conservative, which is what the drift then shows). Direct forces have their net force removed by
default (``zero_net_direct``), so that total momentum is conserved as with ``-dE/dr``. The potential energy
in the log is always the conservative model's.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes
from ase.io.trajectory import Trajectory
from ase.md import velocitydistribution as _vd
from ase.md.bussi import Bussi
from ase.md.md import MolecularDynamics
from ase.md.verlet import VelocityVerlet

from lam.md.calculator import LAMCalculator
from lam.md.drift import energy_drift
from lam.md.integrators import MultipleTimeStepVerlet
from lam.models.potential import Potential

__all__ = ["ENSEMBLES", "MDResult", "init_velocities", "load_structure", "make_dynamics", "run_md"]

ENSEMBLES = ("nve", "nvt", "mts")
MTS_INNER = ("direct", "frozen")
LOG_COLUMNS = ("step", "time_fs", "epot_ev", "ekin_ev", "etot_ev", "temperature_k", "conserved_ev")


@dataclass
class MDResult:
    """Outcome of :func:`run_md`.

    ``times_fs`` … ``conserved_ev`` are the logged samples (every ``log_every`` steps, step 0 included).
    ``drift_mev_atom_ps`` is the least-squares slope of ``conserved_ev`` (signed), ``steps_per_s`` the
    integrator steps per wall-clock second (outer steps for ``mts``), ``force_calls`` the number of
    conservative and direct force evaluations and ``model_passes`` the number of model evaluations (a
    conservative and a direct force at the same positions share one pass).
    """

    ensemble: str
    n_atoms: int
    steps: int
    dt_fs: float
    n_inner: int
    direct: bool
    times_fs: np.ndarray
    epot_ev: np.ndarray
    ekin_ev: np.ndarray
    etot_ev: np.ndarray
    temperature_k: np.ndarray
    conserved_ev: np.ndarray
    drift_mev_atom_ps: float
    wall_s: float
    force_calls: dict[str, int] = field(default_factory=dict)
    model_passes: int = 0
    trajectory: Path | None = None
    log: Path | None = None
    atoms: Atoms | None = None

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.wall_s if self.wall_s > 0 else float("nan")

    @property
    def ps_per_hour(self) -> float:
        """Simulated picoseconds per wall-clock hour."""
        return self.steps * self.dt_fs / 1000.0 / self.wall_s * 3600.0 if self.wall_s > 0 else float("nan")

    def summary(self) -> str:
        """One paragraph for the terminal."""
        scheme = f"{self.ensemble}" + (f" (M={self.n_inner}, inner dt {self.dt_fs / self.n_inner:g} fs)"
                                       if self.ensemble == "mts" else "") + (" direct forces" if self.direct else "")
        what = "Etot - thermostat work" if self.ensemble == "nvt" else "Etot"
        lines = [
            f"{scheme}: {self.n_atoms} atoms, {self.steps} steps of {self.dt_fs:g} fs "
            f"({self.steps * self.dt_fs / 1000:.4g} ps) in {self.wall_s:.1f} s: {self.steps_per_s:.3g} steps/s, "
            f"{self.ps_per_hour:.3g} ps/h",
            f"drift of {what}: {self.drift_mev_atom_ps:+.4g} meV/atom/ps",
            f"mean T {self.temperature_k.mean():.1f} K; force calls {self.force_calls}, model passes "
            f"{self.model_passes}",
        ]
        if self.trajectory is not None:
            lines.append(f"trajectory {self.trajectory}, log {self.log}")
        return "\n".join(lines)


class _Forces:
    """Conservative and direct forces from one :class:`LAMCalculator`, with call counters.

    r-RESPA asks for the direct force at the end of the inner loop and then for the conservative force at the
    same positions; with ``n_inner`` given, every ``n_inner``-th direct call (from the first one) is evaluated
    together with the conservative force in one model pass, which the conservative call then finds cached.
    The calculator compares positions, so a wrong guess costs time, never correctness. With ``zero_net`` the
    direct forces have their net force removed (:func:`lam.md.integrators.without_net_force`).
    """

    def __init__(self, calc: LAMCalculator, n_inner: int | None = None, zero_net: bool = True) -> None:
        self.calc = calc
        self.n_inner = n_inner
        self.zero_net = zero_net
        self.direct_calls = 0
        self.conservative_calls = 0
        self.passes = 0
        self._last_results: dict[str, Any] | None = None
        self.features: torch.Tensor | None = None  # inner="frozen": the features the inner steps use

    def _count_pass(self) -> None:
        if self.calc.results is not self._last_results:
            self.passes += 1
            self._last_results = self.calc.results

    def conservative(self, atoms: Atoms) -> np.ndarray:
        self.conservative_calls += 1
        forces = self.calc.get_forces(atoms)
        self._count_pass()
        return forces

    def direct(self, atoms: Atoms) -> np.ndarray:
        shared = self.n_inner is not None and self.direct_calls % self.n_inner == 0
        self.direct_calls += 1
        if shared and (self.calc.check_state(atoms) or not {"forces", "direct_forces"} <= set(self.calc.results)):
            self.calc.calculate(atoms, ["energy", "forces", "direct_forces"], all_changes)
        forces = np.array(self.calc.get_property("direct_forces", atoms), dtype=np.float64)
        self._count_pass()
        if self.zero_net:
            forces -= forces.mean(axis=0)
        return forces

    def frozen(self, atoms: Atoms) -> np.ndarray:
        """The direct head at ``atoms`` on the frozen features (no descriptor pass)."""
        if self.features is None:
            raise RuntimeError("frozen direct forces before any refresh of the features")
        self.direct_calls += 1
        forces = self.calc.frozen_direct_forces(atoms, self.features)
        if self.zero_net:
            forces -= forces.mean(axis=0)
        return forces

    def refresh(self, atoms: Atoms) -> np.ndarray:
        """Freeze the features of the conservative evaluation at ``atoms`` and return the frozen forces there."""
        self.calc.get_forces(atoms)  # cached when the integrator has just asked for the conservative force
        self.features = self.calc.features
        return self.frozen(atoms)


class _DirectCalculator(Calculator):
    """Forces = the model's direct forces; energy = the conservative energy, computed only when asked."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, forces: _Forces) -> None:
        super().__init__()
        self.forces_src = forces

    def calculate(self, atoms: Atoms | None = None, properties: Sequence[str] = ("energy",),
                  system_changes: Sequence[str] = all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        results = dict(self.results) if not system_changes else {}
        if "forces" in properties and "forces" not in results:
            results["forces"] = self.forces_src.direct(atoms)
        if ("energy" in properties or "free_energy" in properties) and "energy" not in results:
            energy = float(self.forces_src.calc.get_potential_energy(atoms))
            self.forces_src._count_pass()
            results["energy"] = results["free_energy"] = energy
        self.results = results


def load_structure(structure: str | Path | Atoms, index: int = 0) -> Atoms:
    """An ``Atoms`` copy of ``structure``, or frame ``index`` of any file :func:`lam.data.formats.read_any` reads."""
    if isinstance(structure, Atoms):
        return structure.copy()
    from lam.data.formats import read_any
    from lam.data.graph import frame_to_atoms

    path = Path(structure)
    if not path.exists():
        raise FileNotFoundError(f"{path}: structure file or directory not found")
    if index < 0:
        raise ValueError(f"{path}: index must be >= 0, got {index}")
    count = 0
    for count, frame in enumerate(read_any(path), start=1):
        if count - 1 == index:
            atoms = frame_to_atoms(frame)
            atoms.calc = None
            return atoms
    raise IndexError(f"{path}: frame {index} requested but it has only {count} frame(s)")


def init_velocities(atoms: Atoms, temperature: float, seed: int = 0) -> None:
    """Maxwell–Boltzmann momenta at ``temperature`` K (seeded), with zero total momentum."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 K, got {temperature}")
    rng = np.random.default_rng(seed)
    if hasattr(_vd, "thermalize_momenta"):  # ASE >= 3.29
        _vd.thermalize_momenta(atoms, temperature, rng=rng)
    else:  # pragma: no cover - older ASE
        _vd.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    _vd.Stationary(atoms)


def _resolve_model(model: Potential | str | Path, dtype: str | torch.dtype | None,
                   device: str | torch.device | None) -> Potential:
    if not isinstance(model, Potential):
        from lam.hub import load

        model = load(str(model))
    if dtype is not None:
        target = dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype).replace("torch.", ""))
        model = model.to(target)
    if device is not None:
        model = model.to(device)
    return model.eval()


def make_dynamics(atoms: Atoms, calc: LAMCalculator, ensemble: str, dt_fs: float, temperature: float,
                  n_inner: int, direct: bool, taut_fs: float, seed: int, zero_net_direct: bool = True,
                  inner: str = "direct", refresh_every: int = 25) -> tuple[MolecularDynamics, _Forces]:
    """The ASE dynamics object for ``ensemble`` and the force source (whose counters it updates)."""
    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    if inner not in MTS_INNER:
        raise ValueError(f"inner must be one of {MTS_INNER}, got {inner!r}")
    if (ensemble == "mts" or direct) and not calc.has_direct_forces:
        raise ValueError(f"ensemble={ensemble}{' with direct forces' if direct else ''} needs a model with a "
                         "direct-force head (build it with direct_force=True, train it with the hybrid recipe)")
    if ensemble == "mts" and direct:
        raise ValueError("direct=True applies to nve/nvt; mts already uses the direct forces for its inner steps")
    if dt_fs <= 0:
        raise ValueError(f"dt must be > 0 fs, got {dt_fs}")
    if ensemble == "mts":
        if n_inner < 1:
            raise ValueError(f"n_inner must be >= 1, got {n_inner}")
        atoms.calc = calc
        if inner == "frozen":
            forces = _Forces(calc, zero_net=zero_net_direct)
            dyn: MolecularDynamics = MultipleTimeStepVerlet(atoms, dt_fs * units.fs, n_inner, forces.frozen,
                                                            forces.conservative, refresh_fast=forces.refresh,
                                                            refresh_every=refresh_every)
            return dyn, forces
        forces = _Forces(calc, n_inner=n_inner, zero_net=zero_net_direct)
        dyn = MultipleTimeStepVerlet(atoms, dt_fs * units.fs, n_inner, forces.direct, forces.conservative)
        return dyn, forces
    forces = _Forces(calc, zero_net=zero_net_direct)
    if direct:
        atoms.calc = _DirectCalculator(forces)
    else:
        atoms.calc = _CountingCalculator(calc, forces)
    if ensemble == "nve":
        return VelocityVerlet(atoms, dt_fs * units.fs), forces
    if temperature <= 0:
        raise ValueError(f"nvt needs temperature > 0 K, got {temperature}")
    if taut_fs <= 0:
        raise ValueError(f"taut must be > 0 fs, got {taut_fs}")
    return Bussi(atoms, dt_fs * units.fs, temperature_K=temperature, taut=taut_fs * units.fs,
                 rng=np.random.default_rng(seed + 1)), forces


class _CountingCalculator(Calculator):
    """The conservative calculator, counting force calls and model passes (for logs and benchmarks)."""

    implemented_properties = ["energy", "free_energy", "forces", "energies", "stress"]

    def __init__(self, calc: LAMCalculator, forces: _Forces) -> None:
        super().__init__()
        self.inner, self.forces_src = calc, forces

    def calculate(self, atoms: Atoms | None = None, properties: Sequence[str] = ("energy",),
                  system_changes: Sequence[str] = all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        if "forces" in properties:
            self.forces_src.conservative(self.atoms)
        else:
            self.inner.get_property(properties[0], self.atoms)
            self.forces_src._count_pass()
        self.results = dict(self.inner.results)


def run_md(model: Potential | str | Path, structure: str | Path | Atoms, ensemble: str = "nve",
           dt: float = 0.5, steps: int = 100, temperature: float = 300.0, n_inner: int = 4,
           head: str | None = None, index: int = 0, output_dir: str | Path | None = None, seed: int = 0,
           log_every: int = 1, taut: float = 100.0, direct: bool = False, dtype: str | None = None,
           device: str | None = None, keep_velocities: bool = False, progress: bool = True,
           compress: bool = False, zero_net_direct: bool = True, direct_dtype: str | None = None,
           skin: float = 0.5, inner: str = "direct", refresh_every: int = 25) -> MDResult:
    """Run MD and return the logged energies, the drift of the conserved energy and timings.

    Args:
        model: a :class:`Potential` or a model source for :func:`lam.hub.load` (path, URL, registry name).
        structure: ``Atoms`` or a file/directory any lam reader reads (frame ``index``).
        ensemble: ``nve``, ``nvt`` (Bussi thermostat, time constant ``taut`` fs) or ``mts`` (r-RESPA).
        dt: time step in fs (the outer step for ``mts``; the inner step is ``dt / n_inner``).
        steps: number of integrator steps (outer steps for ``mts``).
        temperature: K; initial Maxwell–Boltzmann velocities (zero total momentum) and the NVT target.
        n_inner: inner steps per outer step for ``mts`` (M).
        head: model head (required for multi-head models).
        output_dir: where ``md.traj`` and ``md.csv`` go (created); ``None`` writes nothing.
        seed: seed of the initial velocities and of the thermostat noise.
        log_every: log (and write a frame) every this many steps.
        direct: integrate ``nve``/``nvt`` with the direct-force head instead of ``-dE/dr``.
        dtype: convert the model (``float64`` recommended for drift measurements); ``None`` keeps it.
        device: torch device (default: the model's).
        keep_velocities: keep the velocities ``structure`` carries instead of drawing new ones.
        progress: show a tqdm progress bar.
        compress: tabulate the se_e2_a embedding (faster; conserves energy as the network does, see
            tests/md/test_drift_model.py). Off by default so that MD runs the exact network.
        zero_net_direct: remove the net force of the direct forces (``mts`` and ``direct=True``), so that
            they conserve total momentum as ``-dE/dr`` does; ``False`` uses the head's raw output.
        direct_dtype: precision of the direct forces (``mts`` inner steps, ``direct=True``), e.g. ``float32``
            with a ``float64`` model: the cheap force in single precision, the conservative correction and
            the logged energies in double (see ``LAMCalculator``). ``None``: the model's dtype.
        skin: Verlet skin (Å) of the calculator's neighbour list; results do not depend on it.
        inner: ``mts`` inner force. ``direct``: the direct head with a descriptor pass at every inner step.
            ``frozen``: the direct head on descriptor features frozen at a conservative evaluation, no
            descriptor pass in the inner steps (much cheaper); with a head of ``kind="energy"`` the inner
            dynamics are then Hamiltonian between refreshes (see :mod:`lam.models.direct_force`).
        refresh_every: ``inner="frozen"``: outer steps between refreshes of the frozen features. Between
            refreshes the splitting ``-dE/dr = F_NC + (-dE/dr - F_NC)`` is one fixed conservative splitting
            (with a ``kind="energy"`` head), so r-RESPA is symplectic; every refresh changes it, which
            costs a little energy (measured in docs/benchmarks.md), so refresh rarely (tens of fs).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every}")
    potential = _resolve_model(model, dtype, device)
    atoms = load_structure(structure, index)
    if not keep_velocities:
        init_velocities(atoms, temperature, seed)
    calc = LAMCalculator(potential, head=head, compress=compress, direct_dtype=direct_dtype, skin=skin)
    dyn, forces = make_dynamics(atoms, calc, ensemble, dt, temperature, n_inner, direct, taut, seed,
                                zero_net_direct=zero_net_direct, inner=inner, refresh_every=refresh_every)

    rows: list[tuple[float, ...]] = []
    traj = None
    out = Path(output_dir) if output_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        traj = Trajectory(str(out / "md.traj"), "w", atoms)

    def record() -> None:
        epot = float(atoms.get_potential_energy())
        ekin = float(atoms.get_kinetic_energy())
        work = float(getattr(dyn, "transferred_energy", 0.0))
        rows.append((dyn.nsteps, dyn.nsteps * dt, epot, ekin, epot + ekin, float(atoms.get_temperature()),
                     epot + ekin - work))
        if traj is not None:
            traj.write(atoms)

    dyn.attach(record, interval=log_every)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"MD {ensemble}", unit="step")
        dyn.attach(lambda: bar.update(dyn.nsteps - bar.n), interval=1)
    start = time.perf_counter()
    try:
        dyn.run(steps)
        wall = time.perf_counter() - start
        if rows[-1][0] != dyn.nsteps:  # the last step is always logged so that the drift covers the whole run
            record()
    finally:
        if bar is not None:
            bar.close()
        if traj is not None:
            traj.close()
    data = np.array(rows, dtype=np.float64)
    log_path = None
    if out is not None:
        log_path = out / "md.csv"
        with open(log_path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(LOG_COLUMNS)
            for row in rows:
                writer.writerow([int(row[0]), *(f"{v:.10g}" for v in row[1:])])
    drift = energy_drift(data[:, 1], data[:, 6], len(atoms)) if len(data) >= 2 else float("nan")
    calls = {"conservative": forces.conservative_calls, "direct": forces.direct_calls}
    if isinstance(dyn, MultipleTimeStepVerlet):
        calls = {"conservative": dyn.slow_calls, "direct": dyn.fast_calls}
    return MDResult(ensemble=ensemble, n_atoms=len(atoms), steps=steps, dt_fs=float(dt),
                    n_inner=int(n_inner) if ensemble == "mts" else 1, direct=direct, times_fs=data[:, 1],
                    epot_ev=data[:, 2], ekin_ev=data[:, 3], etot_ev=data[:, 4], temperature_k=data[:, 5],
                    conserved_ev=data[:, 6], drift_mev_atom_ps=drift, wall_s=wall, force_calls=calls,
                    model_passes=forces.passes, trajectory=(out / "md.traj") if out is not None else None,
                    log=log_path, atoms=atoms)
