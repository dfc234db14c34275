"""r-RESPA resonance check: multiple time stepping with a *conservative* fast force.

Integrates 192 waters (tests/data/deepmd_water_64h2o/data_0, 300 K, float64, NVE) with r-RESPA whose inner
force is ``-dE/dr`` of a second model (``--fast``) and whose outer correction is ``-dE/dr`` of the reference
model (``--slow``) minus it. Both forces are gradients, so the splitting is fixed and the integrator is
symplectic: any energy growth comes from the outer step meeting the fast vibrations (resonance), not from a
curl. Prints the RMS gap between the two force fields and, per M, the drift (meV/atom/ps ± SE) and the
temperatures. Compare with ``bench_md.py``, whose inner force is a direct-force head.

``--perturb K [K ...]`` instead of ``--fast``: the inner force is the reference force plus that of harmonic
springs ``K/2 (r - r0)^2`` (eV/Å^2) on the O-H bonds (each H bonded to its nearest O at the start, ``r0`` the
mean bond length there), so the fast-force error is an exact gradient of a chosen size that varies exactly
with the O-H stretch, the mode the outer step resonates with. It tells how close to ``-dE/dr`` an inner force
must be for a given outer step. The reference model is evaluated at every inner step (an accuracy study: the
runs are not faster than conservative MD).

    python scripts/bench/mts_resonance.py --slow EXPORT_DIR --fast OTHER_EXPORT_DIR --m 4 8 --fs 300
    python scripts/bench/mts_resonance.py --slow EXPORT_DIR --perturb 0.3 1 3 --m 8 --fs 300
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
WATER = REPO / "tests" / "data" / "deepmd_water_64h2o"


def main() -> None:
    from ase import units

    from lam.hub import load
    from lam.md.calculator import LAMCalculator
    from lam.md.drift import energy_drift_with_error
    from lam.md.integrators import MultipleTimeStepVerlet
    from lam.md.run import init_velocities, load_structure

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slow", required=True, help="reference model (lam.hub source)")
    parser.add_argument("--fast", help="model whose -dE/dr is the inner force (lam.hub source)")
    parser.add_argument("--perturb", type=float, nargs="+",
                        help="instead of --fast: O-H spring constants (eV/Å^2) added to the reference force")
    parser.add_argument("--head", default="water")
    parser.add_argument("--m", type=int, nargs="+", default=[4, 8], help="inner steps per outer step")
    parser.add_argument("--h", type=float, default=0.5, help="inner step (fs)")
    parser.add_argument("--fs", type=float, default=300.0, help="simulated time per run (fs)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if (args.fast is None) == (args.perturb is None):
        parser.error("give either --fast or --perturb")
    torch.set_num_threads(args.threads)
    slow = LAMCalculator(load(args.slow).double().eval(), head=args.head, compress=False)
    start = load_structure(WATER / "data_0")
    if args.fast:
        fast = LAMCalculator(load(args.fast).double().eval(), head=args.head, compress=False)
        gap = fast.get_forces(start.copy()) - slow.get_forces(start.copy())
        print(f"RMS |F_fast - F_slow| on data_0 frame 0: {np.sqrt(np.mean(gap ** 2)) * 1000:.0f} meV/Å", flush=True)
        cases = [(f"--fast {args.fast}", m, fast.get_forces, 0.0) for m in args.m]
    else:
        springs = OHSprings(start)
        cases = [(f"O-H springs K = {k:g} eV/Å^2", m, springs.plus(slow.get_forces, k), k)
                 for k in args.perturb for m in args.m]
    for what, m, fast_forces, k in cases:
        atoms = start.copy()
        init_velocities(atoms, 300.0, seed=0)
        atoms.calc = slow
        dyn = MultipleTimeStepVerlet(atoms, m * args.h * units.fs, m, fast_forces, slow.get_forces)
        gaps = []
        times, energies, temps = [], [], []
        t0 = time.process_time()
        for step in range(int(round(args.fs / (m * args.h))) + 1):
            if step:
                dyn.run(1)
            times.append(step * m * args.h)
            energies.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())
            temps.append(atoms.get_temperature())
            if k:
                gaps.append(np.sqrt(np.mean(springs.forces(atoms, k) ** 2)))
        drift, err = energy_drift_with_error(np.array(times), np.array(energies), len(atoms), 10)
        size = f", RMS fast-force error {np.mean(gaps) * 1000:.1f} meV/Å" if gaps else ""
        print(f"{what}{size}: M={m} (outer {m * args.h:g} fs): drift {drift:+.3g} ± {err:.2g} meV/atom/ps, mean/max T "
              f"{np.mean(temps):.0f}/{np.max(temps):.0f} K, {time.process_time() - t0:.0f} CPU s", flush=True)


class OHSprings:
    """Harmonic springs on the O-H bonds of a water box (bonds and rest length from ``start``)."""

    def __init__(self, start) -> None:
        o = np.flatnonzero(start.numbers == 8)
        self.h = np.flatnonzero(start.numbers == 1)
        self.o = np.array([o[np.argmin(start.get_distances(int(i), o, mic=True))] for i in self.h])
        self.r0 = float(np.mean([start.get_distance(int(i), int(j), mic=True) for i, j in zip(self.h, self.o)]))

    def forces(self, atoms, k: float) -> np.ndarray:
        """``-grad`` of ``sum k/2 (r - r0)^2`` over the bonds (eV/Å)."""
        d = np.array([atoms.get_distance(int(j), int(i), mic=True, vector=True) for i, j in zip(self.h, self.o)])
        r = np.linalg.norm(d, axis=1, keepdims=True)
        f_h = -k * (r - self.r0) * d / r  # on H; d points from O to H
        out = np.zeros((len(atoms), 3))
        np.add.at(out, self.h, f_h)
        np.add.at(out, self.o, -f_h)
        return out

    def plus(self, base, k: float):
        return lambda atoms: base(atoms) + self.forces(atoms, k)


if __name__ == "__main__":
    main()
