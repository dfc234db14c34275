#!/usr/bin/env python
"""Convert the SPICE HDF5 (e.g. ``SPICE-2.0.1.hdf5``) to LAM-H5.

Layout (Eastman et al., Sci. Data 10, 11 (2023); openmm/spice-dataset): one group per molecule with
``atomic_numbers`` (N,), ``conformations`` (C, N, 3) in bohr, ``dft_total_energy`` (C,) in Hartree and
``dft_total_gradient`` (C, N, 3) in Hartree/bohr; forces = −gradient. ωB97M-D3(BJ)/def2-TZVPPD (Psi4).
Conformers with NaN labels are skipped and counted. ``--neutral-only`` drops molecules whose formal charge
(sum of the ``mbis_charges`` of the first conformer, rounded) is not zero; otherwise charged species are kept
(the model sees no charge input).

Usage: ``python scripts/convert_spice.py SPICE-2.0.1.hdf5 spice.h5 [--limit N] [--neutral-only]``
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

import h5py
import numpy as np
from ase.units import Bohr, Hartree

from lam.data.errors import DataError
from lam.data.formats.h5 import write_h5
from lam.data.frame import Frame


def iter_spice(path: str, limit: int | None = None, counters: dict[str, int] | None = None,
               neutral_only: bool = False) -> Iterator[Frame]:
    """Frames in eV / Å; ``counters`` gets ``skipped_nan`` and ``skipped_charged``."""
    counters = counters if counters is not None else {}
    counters.setdefault("skipped_nan", 0)
    counters.setdefault("skipped_charged", 0)
    n_out = 0
    with h5py.File(path, "r") as h5:
        for name in sorted(h5.keys()):
            grp = h5[name]
            for key in ("atomic_numbers", "conformations", "dft_total_energy", "dft_total_gradient"):
                if key not in grp:
                    raise DataError("dataset missing in group", file=path, field=f"{name}/{key}")
            numbers = np.asarray(grp["atomic_numbers"][...], dtype=np.int64)
            pos = np.asarray(grp["conformations"][...], dtype=np.float64) * Bohr
            energy = np.asarray(grp["dft_total_energy"][...], dtype=np.float64) * Hartree
            forces = -np.asarray(grp["dft_total_gradient"][...], dtype=np.float64) * (Hartree / Bohr)
            if pos.shape[1:] != (numbers.size, 3) or forces.shape != pos.shape or energy.shape != pos.shape[:1]:
                raise DataError(f"inconsistent shapes: atomic_numbers {numbers.shape}, conformations {pos.shape}, "
                                f"energy {energy.shape}, gradient {forces.shape}", file=path, field=name)
            if neutral_only and "mbis_charges" in grp:
                charge = float(np.asarray(grp["mbis_charges"][0]).sum())
                if round(charge) != 0:
                    counters["skipped_charged"] += pos.shape[0]
                    continue
            ok = np.isfinite(energy) & np.isfinite(forces).all(axis=(1, 2))
            counters["skipped_nan"] += int((~ok).sum())
            for c in np.flatnonzero(ok):
                if limit is not None and n_out >= limit:
                    return
                yield Frame(numbers=numbers, positions=pos[c], energy=energy[c], forces=forces[c])
                n_out += 1


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", help="SPICE HDF5 file")
    ap.add_argument("dst", help="output LAM-H5 file")
    ap.add_argument("--limit", type=int, default=None, help="stop after N frames")
    ap.add_argument("--head", default="spice_wb97md3bj")
    ap.add_argument("--neutral-only", action="store_true", help="drop molecules with non-zero total charge")
    args = ap.parse_args(argv)
    counters: dict[str, int] = {}
    n = write_h5(args.dst, iter_spice(args.src, args.limit, counters, args.neutral_only),
                 functional="wB97M-D3(BJ)/def2-TZVPPD", head=args.head, source=f"SPICE {args.src}", progress=True)
    print(f"wrote {n} frames to {args.dst}; skipped {counters['skipped_nan']} NaN conformers, "
          f"{counters['skipped_charged']} charged conformers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
