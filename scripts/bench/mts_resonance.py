"""r-RESPA resonance check: multiple time stepping with a *conservative* fast force.

Integrates 192 waters (tests/data/deepmd_water_64h2o/data_0, 300 K, float64, NVE) with r-RESPA whose inner
force is ``-dE/dr`` of a second model (``--fast``) and whose outer correction is ``-dE/dr`` of the reference
model (``--slow``) minus it. Both forces are gradients, so the splitting is fixed and the integrator is
symplectic: any energy growth comes from the outer step meeting the fast vibrations (resonance), not from a
curl. Prints the RMS gap between the two force fields and, per M, the drift (meV/atom/ps ± SE) and the
temperatures. Compare with ``bench_md.py``, whose inner force is a direct-force head.

    python scripts/bench/mts_resonance.py --slow EXPORT_DIR --fast OTHER_EXPORT_DIR --m 4 8 --fs 300
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
    parser.add_argument("--fast", required=True, help="model whose -dE/dr is the inner force (lam.hub source)")
    parser.add_argument("--head", default="water")
    parser.add_argument("--m", type=int, nargs="+", default=[4, 8], help="inner steps per outer step")
    parser.add_argument("--h", type=float, default=0.5, help="inner step (fs)")
    parser.add_argument("--fs", type=float, default=300.0, help="simulated time per run (fs)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    slow = LAMCalculator(load(args.slow).double().eval(), head=args.head, compress=False)
    fast = LAMCalculator(load(args.fast).double().eval(), head=args.head, compress=False)
    start = load_structure(WATER / "data_0")
    gap = fast.get_forces(start.copy()) - slow.get_forces(start.copy())
    print(f"RMS |F_fast - F_slow| on data_0 frame 0: {np.sqrt(np.mean(gap ** 2)) * 1000:.0f} meV/Å", flush=True)
    for m in args.m:
        atoms = start.copy()
        init_velocities(atoms, 300.0, seed=0)
        atoms.calc = slow
        dyn = MultipleTimeStepVerlet(atoms, m * args.h * units.fs, m, fast.get_forces, slow.get_forces)
        times, energies, temps = [], [], []
        t0 = time.process_time()
        for k in range(int(round(args.fs / (m * args.h))) + 1):
            if k:
                dyn.run(1)
            times.append(k * m * args.h)
            energies.append(atoms.get_potential_energy() + atoms.get_kinetic_energy())
            temps.append(atoms.get_temperature())
        drift, err = energy_drift_with_error(np.array(times), np.array(energies), len(atoms), 10)
        print(f"M={m} (outer {m * args.h:g} fs): drift {drift:+.3g} ± {err:.2g} meV/atom/ps, mean/max T "
              f"{np.mean(temps):.0f}/{np.max(temps):.0f} K, {time.process_time() - t0:.0f} CPU s", flush=True)


if __name__ == "__main__":
    main()
