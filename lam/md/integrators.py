"""Multiple time stepping (r-RESPA) with cheap direct forces and a conservative correction.

Inner velocity-Verlet steps of ``dt/M`` use the fast, directly predicted force ``F_NC``; around them, once per
outer step ``dt``, a half-kick with ``F_C − F_NC`` restores the conservative dynamics (``F_C = −∇E``). With
``F_NC = F_C`` the scheme is exactly velocity Verlet at ``dt/M``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from ase import Atoms
from ase.md.md import MolecularDynamics

ForceFn = Callable[[Atoms], np.ndarray]


class CountingForces:
    """Wraps a force function and counts its calls (so tests and logs can show the cost of each force kind)."""

    def __init__(self, fn: ForceFn) -> None:
        self.fn = fn
        self.calls = 0

    def __call__(self, atoms: Atoms) -> np.ndarray:
        self.calls += 1
        return np.asarray(self.fn(atoms), dtype=np.float64)


def calculator_forces(calc: object, prop: str = "forces") -> ForceFn:
    """A force function reading ``prop`` from an ASE calculator (``forces`` or, e.g., ``direct_forces``)."""

    def fn(atoms: Atoms) -> np.ndarray:
        if prop == "forces":
            return calc.get_forces(atoms)  # type: ignore[attr-defined]
        return calc.get_property(prop, atoms)  # type: ignore[attr-defined]

    return fn


def without_net_force(fn: ForceFn) -> ForceFn:
    """``fn`` with its net force removed (the mean force subtracted from every atom).

    A conservative force of a translation-invariant energy sums to zero, so total momentum is conserved. A
    directly predicted force does not sum to zero exactly; its net force accelerates the centre of mass and
    feeds kinetic energy into the box. Subtracting the mean restores momentum conservation, and because the
    conservative force has zero net force, the projection can only bring ``F_NC`` closer to ``F_C``
    (``|P F_NC - F_C| <= |F_NC - F_C|`` for the projection ``P`` onto zero-sum force fields).
    """

    def wrapped(atoms: Atoms) -> np.ndarray:
        forces = np.array(fn(atoms), dtype=np.float64)
        return forces - forces.mean(axis=0)

    return wrapped


class MultipleTimeStepVerlet(MolecularDynamics):
    """r-RESPA NVE integrator: ``n_inner`` fast steps per outer step ``timestep``.

    ``fast_forces`` is the cheap direct force, ``slow_forces`` the conservative one; both are callables on
    ``Atoms``. ``atoms.calc`` (used by ASE loggers for the potential energy) should be the conservative model.
    ``fast_calls`` / ``slow_calls`` count force evaluations.

    ``refresh_fast``: for a fast force that depends on state refreshed by the slow evaluation (the frozen
    descriptor features of ``inner="frozen"``), the fast force at the current positions *after* the slow force
    there has been computed. Every outer step then uses one fast force throughout: its opening half-kick
    ``F_slow - F_fast``, its inner steps and its closing half-kick (the fast force at the end evaluated before
    the refresh), so that each outer step is r-RESPA for the splitting ``F_slow = F_fast + (F_slow - F_fast)``
    of that step; the fast force is refreshed at the start of every ``refresh_every``-th outer step (counted in
    ``fast_calls``), and between refreshes the splitting stays the same.
    """

    def __init__(self, atoms: Atoms, timestep: float, n_inner: int, fast_forces: ForceFn,
                 slow_forces: ForceFn, refresh_fast: ForceFn | None = None, refresh_every: int = 1,
                 **kwargs: object) -> None:
        if n_inner < 1:
            raise ValueError(f"n_inner (M) must be >= 1, got {n_inner}")
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {refresh_every}")
        self.refresh_every = int(refresh_every)
        super().__init__(atoms, timestep, **kwargs)
        self.n_inner = int(n_inner)
        self.fast = CountingForces(fast_forces)
        self.slow = CountingForces(slow_forces)
        self.refresh = CountingForces(refresh_fast) if refresh_fast is not None else None
        self._f_fast: np.ndarray | None = None
        self._f_slow: np.ndarray | None = None

    @property
    def fast_calls(self) -> int:
        return self.fast.calls + (self.refresh.calls if self.refresh is not None else 0)

    @property
    def slow_calls(self) -> int:
        return self.slow.calls

    def step(self, forces: np.ndarray | None = None) -> np.ndarray:  # noqa: ARG002 - ASE signature
        atoms = self.atoms
        masses = atoms.get_masses()[:, None]
        if self.refresh is not None:  # the slow force first: it refreshes what the fast one depends on
            if self._f_slow is None:
                self._f_slow = self.slow(atoms)
            if self._f_fast is None or self.nsteps % self.refresh_every == 0:  # nsteps: outer steps run
                self._f_fast = self.refresh(atoms)
        elif self._f_fast is None or self._f_slow is None:
            self._f_fast = self.fast(atoms)
            self._f_slow = self.slow(atoms)
        dt, h = self.dt, self.dt / self.n_inner
        p = atoms.get_momenta()
        p += 0.5 * dt * (self._f_slow - self._f_fast)
        f_fast = self._f_fast
        for _ in range(self.n_inner):
            p += 0.5 * h * f_fast
            atoms.set_positions(atoms.get_positions() + h * p / masses)
            f_fast = self.fast(atoms)
            p += 0.5 * h * f_fast
        f_slow = self.slow(atoms)
        p += 0.5 * dt * (f_slow - f_fast)
        atoms.set_momenta(p)
        self._f_fast, self._f_slow = f_fast, f_slow
        return f_slow
