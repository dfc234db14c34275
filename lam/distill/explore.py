"""Exploration: short ASE molecular dynamics runs driven by a model, one executor task per (structure, T, seed)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lam.data.frame import Frame

ENSEMBLES = ("nvt", "nve", "npt")


@dataclass(frozen=True)
class ExploreTask:
    """One MD run. ``model_dir`` is an exported model (``lam.load``-able); frames are sampled every ``sample_every``."""

    model_dir: str
    head: str | None
    structure: Frame
    ensemble: str = "nvt"
    temperature: float = 300.0
    steps: int = 200
    timestep_fs: float = 0.5
    sample_every: int = 10
    friction: float = 0.02  # 1/fs, Langevin
    pressure_bar: float = 1.0
    seed: int = 0

    def identity(self) -> dict:
        d = asdict(self)
        s = self.structure
        d["structure"] = {"numbers": s.numbers, "positions": s.positions, "cell": s.cell, "pbc": s.pbc}
        return d


def _make_dynamics(atoms, task: ExploreTask):  # noqa: ANN001, ANN202 - ASE objects
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet

    dt = task.timestep_fs * units.fs
    if task.ensemble == "nvt":
        return Langevin(atoms, dt, temperature_K=task.temperature, friction=task.friction / units.fs, fixcm=False,
                        rng=np.random.default_rng(task.seed))
    if task.ensemble == "nve":
        return VelocityVerlet(atoms, dt)
    if task.ensemble == "npt":
        if not atoms.pbc.all():
            raise ValueError("ensemble 'npt' needs a periodic structure; use 'nvt' or 'nve' for molecules")
        from ase.md.nptberendsen import NPTBerendsen

        return NPTBerendsen(atoms, dt, temperature_K=task.temperature, pressure_au=task.pressure_bar * units.bar,
                            taut=100 * units.fs, taup=1000 * units.fs, compressibility_au=4.57e-5 / units.bar)
    raise ValueError(f"unknown ensemble {task.ensemble!r}; choose one of {', '.join(ENSEMBLES)}")


def run_explore(task: ExploreTask, trajectory: str | None = None, threads: int = 1) -> list[Frame]:
    """Executor task: run MD with the model and return the sampled frames (positions only, no labels).

    A trajectory that blows up (non-finite positions or forces) stops early; the frames up to then are kept.
    """
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    import lam
    from lam.data.graph import frame_to_atoms

    torch.set_num_threads(threads)
    model = lam.load(task.model_dir)
    atoms = frame_to_atoms(task.structure)
    atoms.calc = lam.LAMCalculator(model, head=task.head)  # tabulated student embedding (compressed)
    thermalize_momenta(atoms, temperature_K=task.temperature, rng=np.random.default_rng(task.seed))
    Stationary(atoms)
    dyn = _make_dynamics(atoms, task)
    writer = None
    if trajectory is not None:
        from ase.io import Trajectory

        Path(trajectory).parent.mkdir(parents=True, exist_ok=True)
        writer = Trajectory(trajectory, "w", atoms)
        dyn.attach(writer.write, interval=task.sample_every)
    frames: list[Frame] = []

    def sample() -> None:
        frames.append(Frame(numbers=atoms.numbers.copy(), positions=atoms.positions.copy(),
                            cell=atoms.cell.array.copy(), pbc=atoms.pbc.copy()))

    dyn.attach(sample, interval=task.sample_every)
    try:
        for _ in range(task.steps // task.sample_every):
            dyn.run(task.sample_every)
            if not np.all(np.isfinite(atoms.positions)) or np.abs(atoms.get_forces()).max() > 1e3:
                break
    finally:
        if writer is not None:
            writer.close()
    # the first sample is the starting structure itself: keep only what MD produced
    return frames[1:]
