"""Labelling selected frames: with a reference code behind an ASE calculator, chunked into executor tasks.

A failed label is recorded and the frame excluded; transient errors (I/O, time-outs) are retried. The caller
stops the iteration with a clear message when fewer than ``min_success`` of the frames got labels.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lam.data.frame import Frame

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError, ConnectionError)


@dataclass(frozen=True)
class CalculatorSpec:
    """A picklable recipe for an ASE calculator: dotted path of a class or factory plus keyword arguments.

    Examples: ``CalculatorSpec("ase.calculators.emt.EMT")``,
    ``CalculatorSpec("lam.calculators.pyscf.PySCFCalculator", {"xc": "pbe", "basis": "def2-svp"})``.
    """

    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        module_name, _, attr = self.target.rpartition(".")
        if not module_name:
            raise ValueError(f"calculator target {self.target!r} must be a dotted path like 'ase.calculators.emt.EMT'")
        factory = getattr(importlib.import_module(module_name), attr)
        return factory(**self.kwargs)

    def identity(self) -> dict[str, Any]:
        return {"target": self.target, "kwargs": self.kwargs}


def label_frame(frame: Frame, calc: Any) -> Frame:
    """Energy, forces (and virial for periodic frames) of one frame from an ASE calculator."""
    from ase import Atoms

    # plain ASE atoms (no torch import: labelling workers stay light)
    atoms = Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
    atoms.calc = calc
    energy = float(atoms.get_potential_energy())
    forces = np.asarray(atoms.get_forces(), dtype=np.float64)
    virial = None
    if frame.pbc.all() and frame.volume > 0 and "stress" in getattr(calc, "implemented_properties", ()):
        stress = atoms.get_stress(voigt=False)
        virial = -np.asarray(stress) * frame.volume
    if not (np.isfinite(energy) and np.all(np.isfinite(forces))):
        raise FloatingPointError("reference calculator returned non-finite energy or forces")
    return Frame(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc,
                 energy=energy, forces=forces, virial=virial)


def label_chunk(frames: Sequence[Frame], spec: CalculatorSpec, max_retries: int = 2,
                threads: int = 1) -> tuple[list[Frame | None], list[str]]:
    """Executor task: label a chunk of frames. Returns (labelled frame or None per input, error message per input).

    Runs in a worker process; ``threads`` caps OpenMP/BLAS threads there (one per core is fastest for DFT codes).
    """
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    calc = spec.build()
    out: list[Frame | None] = []
    errors: list[str] = []
    for frame in frames:
        attempt = 0
        while True:
            try:
                out.append(label_frame(frame, calc))
                errors.append("")
                break
            except TRANSIENT_ERRORS as exc:
                attempt += 1
                if attempt > max_retries:
                    out.append(None)
                    errors.append(f"transient error after {max_retries} retries: {type(exc).__name__}: {exc}")
                    break
                calc = spec.build()  # a fresh calculator after an I/O hiccup
            except Exception as exc:  # noqa: BLE001 - a failed label is recorded, not fatal
                out.append(None)
                errors.append(f"{type(exc).__name__}: {exc}")
                break
    return out, errors


class LabellingFailed(RuntimeError):
    """Too few frames of an iteration could be labelled."""


def check_success(n_ok: int, n_total: int, min_success: float, iteration: int, errors: Sequence[str]) -> None:
    if n_total == 0:
        return
    frac = n_ok / n_total
    if frac < min_success:
        sample = "; ".join(sorted({e for e in errors if e})[:3])
        raise LabellingFailed(
            f"iteration {iteration}: only {n_ok}/{n_total} frames ({frac:.0%}) were labelled, below the required "
            f"{min_success:.0%} (label.min_success). First errors: {sample}"
        )
