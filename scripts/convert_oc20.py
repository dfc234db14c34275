#!/usr/bin/env python
"""Convert OC20 S2EF extxyz files (from ``s2ef_train_*.tar``, optionally ``.xz``-compressed) to LAM-H5.

Each ``N.extxyz[.xz]`` holds frames with the DFT (RPBE, VASP) energy and forces in its calculator block;
the sibling ``N.txt[.xz]`` has one line per frame, ``random<system id>,frame<index>,<reference energy>``.
The extxyz energies are TOTAL energies: the reference energy (clean slab + gas-phase adsorbate references) is
NOT yet subtracted — fairchem's ``preprocess_ef.py --ref-energy`` subtracts it when it builds the LMDBs that
OC20 models train on (adsorption energies). ``--energy total`` (default) keeps total energies, which fit
per-element references like every other dataset; ``--energy referenced`` stores ``E − reference`` (then
element references are meaningless and the head should not use them).

Usage: ``python scripts/convert_oc20.py S2EF_DIR_OR_FILE oc20.h5 [--limit N] [--energy referenced]``
"""

from __future__ import annotations

import argparse
import io
import lzma
import sys
from collections.abc import Iterator
from pathlib import Path

import ase.io
import numpy as np

from lam.data.errors import DataError
from lam.data.formats.h5 import write_h5
from lam.data.frame import Frame


def _open_text(path: Path) -> io.TextIOBase:
    return lzma.open(path, "rt") if path.suffix == ".xz" else open(path)  # noqa: SIM115


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".xz")] if name.endswith(".xz") else name


def find_pairs(src: str | Path) -> list[tuple[Path, Path]]:
    """(extxyz, txt) pairs in a directory (sorted by name) or for one extxyz file."""
    src = Path(src)
    files = [src] if src.is_file() else sorted(p for p in src.iterdir() if _stem(p).endswith(".extxyz"))
    if not files:
        raise DataError("no *.extxyz or *.extxyz.xz files found", file=str(src))
    pairs = []
    for f in files:
        base = _stem(f)[: -len(".extxyz")]
        cands = [f.parent / f"{base}.txt", f.parent / f"{base}.txt.xz"]
        txt = next((c for c in cands if c.exists()), None)
        if txt is None:
            raise DataError(f"metadata file {base}.txt(.xz) not found next to it", file=str(f))
        pairs.append((f, txt))
    return pairs


def read_metadata(txt: Path) -> list[tuple[str, str, float]]:
    """Lines ``random<sid>,frame<fid>,<reference energy>`` → [(sid, fid, ref)]."""
    out = []
    with _open_text(txt) as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            parts = line.strip().split(",")
            if len(parts) < 3:
                raise DataError(f"line {i + 1}: expected 'system,frame,reference_energy', got {line!r}",
                                file=str(txt))
            out.append((parts[0], parts[1], float(parts[2])))
    return out


def iter_oc20(src: str | Path, limit: int | None = None, energy: str = "total") -> Iterator[Frame]:
    """Frames in eV / Å from S2EF extxyz files."""
    if energy not in ("total", "referenced"):
        raise ValueError(f"energy must be 'total' or 'referenced', got {energy!r}")
    n = 0
    for xyz, txt in find_pairs(src):
        meta = read_metadata(txt)
        i = -1
        with _open_text(xyz) as fh:
            for i, atoms in enumerate(ase.io.iread(fh, index=":", format="extxyz")):
                if limit is not None and n >= limit:
                    return
                if i >= len(meta):
                    raise DataError(f"more frames than lines in {txt.name} ({len(meta)})", file=str(xyz), frame=i)
                e = float(atoms.get_potential_energy())
                if energy == "referenced":
                    e -= meta[i][2]
                yield Frame(numbers=atoms.numbers, positions=atoms.positions, cell=np.asarray(atoms.cell),
                            pbc=atoms.pbc, energy=e, forces=atoms.get_forces(apply_constraint=False))
                n += 1
        if limit is None or n < limit:
            if i + 1 != len(meta):
                raise DataError(f"{i + 1} frames but {len(meta)} metadata lines in {txt.name}", file=str(xyz))


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", help="directory with N.extxyz[.xz] + N.txt[.xz], or one extxyz file")
    ap.add_argument("dst", help="output LAM-H5 file")
    ap.add_argument("--limit", type=int, default=None, help="stop after N frames")
    ap.add_argument("--energy", choices=("total", "referenced"), default="total")
    ap.add_argument("--head", default="oc20_rpbe")
    args = ap.parse_args(argv)
    n = write_h5(args.dst, iter_oc20(args.src, args.limit, args.energy), functional="RPBE", head=args.head,
                 source=f"OC20 S2EF {args.src} ({args.energy} energy)", progress=True)
    print(f"wrote {n} frames to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
