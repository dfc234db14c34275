#!/usr/bin/env python
"""Convert the ANI-1x release HDF5 (``ani1x-release.h5``) to LAM-H5.

Layout (Smith et al., Sci. Data 7, 134 (2020); figshare 10047041): one group per chemical formula with
``atomic_numbers`` (N,), ``coordinates`` (C, N, 3) in Å, ``wb97x_dz.energy`` (C,) in Hartree and
``wb97x_dz.forces`` (C, N, 3) in Hartree/Å (ωB97x/6-31G(d)). Conformers whose energy or forces contain NaN
(labels missing for that level of theory) are skipped and counted.

Usage: ``python scripts/convert_ani1x.py ani1x-release.h5 ani1x.h5 [--limit N]``
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

import h5py
import numpy as np
from ase.units import Hartree

from lam.data.errors import DataError
from lam.data.formats.h5 import write_h5
from lam.data.frame import Frame

ENERGY_KEY = "wb97x_dz.energy"
FORCES_KEY = "wb97x_dz.forces"


def iter_ani1x(path: str, limit: int | None = None, counters: dict[str, int] | None = None) -> Iterator[Frame]:
    """Frames in eV / Å from an ANI-1x file; ``counters['skipped_nan']`` counts conformers dropped for NaN."""
    counters = counters if counters is not None else {}
    counters.setdefault("skipped_nan", 0)
    n_out = 0
    with h5py.File(path, "r") as h5:
        for formula in sorted(h5.keys()):
            grp = h5[formula]
            for key in ("atomic_numbers", "coordinates", ENERGY_KEY, FORCES_KEY):
                if key not in grp:
                    raise DataError("dataset missing in group", file=path, field=f"{formula}/{key}")
            numbers = np.asarray(grp["atomic_numbers"][...], dtype=np.int64)
            coords = np.asarray(grp["coordinates"][...], dtype=np.float64)
            energy = np.asarray(grp[ENERGY_KEY][...], dtype=np.float64)
            forces = np.asarray(grp[FORCES_KEY][...], dtype=np.float64)
            n_conf = coords.shape[0]
            if coords.shape[1:] != (numbers.size, 3) or energy.shape != (n_conf,) or forces.shape != coords.shape:
                raise DataError(f"inconsistent shapes: numbers {numbers.shape}, coordinates {coords.shape}, "
                                f"energy {energy.shape}, forces {forces.shape}", file=path, field=formula)
            ok = np.isfinite(energy) & np.isfinite(forces).all(axis=(1, 2))
            counters["skipped_nan"] += int((~ok).sum())
            for c in np.flatnonzero(ok):
                if limit is not None and n_out >= limit:
                    return
                yield Frame(numbers=numbers, positions=coords[c], energy=energy[c] * Hartree,
                            forces=forces[c] * Hartree)
                n_out += 1


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", help="ani1x-release.h5")
    ap.add_argument("dst", help="output LAM-H5 file")
    ap.add_argument("--limit", type=int, default=None, help="stop after N frames")
    ap.add_argument("--head", default="ani1x_wb97x")
    args = ap.parse_args(argv)
    counters: dict[str, int] = {}
    n = write_h5(args.dst, iter_ani1x(args.src, args.limit, counters), functional="wB97x/6-31G(d)",
                 head=args.head, source=f"ANI-1x {args.src}", progress=True)
    print(f"wrote {n} frames to {args.dst}; skipped {counters['skipped_nan']} conformers with NaN labels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
