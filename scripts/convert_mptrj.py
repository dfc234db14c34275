#!/usr/bin/env python
"""Convert the MPtrj JSON (``MPtrj_2022.9_full.json``, figshare 23713842) to LAM-H5, streaming.

Layout: ``{mp_id: {frame_id: {"structure": <pymatgen Structure.as_dict()>, "uncorrected_total_energy": eV,
"corrected_total_energy": eV, "force": [[eV/Å]*3]*N, "stress": [[kBar]*3]*3, "magmom", ...}}}``.
The pymatgen dict is parsed without pymatgen: ``lattice.matrix`` (rows = lattice vectors, Å),
``lattice.pbc`` (default all True) and per site ``species[0].element`` and Cartesian ``xyz`` (Å;
``abc`` fractional coordinates are used if ``xyz`` is absent). Partially occupied sites are rejected.

Energy: ``--energy corrected`` (default; MP2020-corrected, puts PBE and PBE+U on one scale, what CHGNet
trains on) or ``uncorrected`` (raw VASP). The corrections depend only on composition, so the forces are the
exact derivative of either energy.

Stress: MPtrj stores the VASP stress in kBar with VASP's sign (positive = compressive, i.e. the cell wants to
expand); the ASE stress is ``σ_ASE = −0.1 GPa · s_kBar`` (the conversion used by the CHGNet / matbench-discovery
MPtrj scripts). The stored virial follows ``lam.data.keys`` (``W = −σ_ASE · V``), hence
``W = +0.1 · ase.units.GPa · s_kBar · V`` in eV.

Usage: ``python scripts/convert_mptrj.py MPtrj_2022.9_full.json mptrj.h5 [--limit N] [--energy uncorrected]``
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
from ase.data import atomic_numbers
from ase.units import GPa

from lam.data.errors import DataError
from lam.data.formats.h5 import write_h5
from lam.data.frame import Frame

KBAR_TO_EV_A3 = 0.1 * GPa  # 1 kBar = 0.1 GPa, in eV/Å³


def iter_top_level_items(path: str, block: int = 1 << 22) -> Iterator[tuple[str, Any]]:
    """``(key, value)`` of a top-level JSON object, decoding one value at a time (constant memory)."""
    dec = json.JSONDecoder()
    with open(path, encoding="utf-8") as fh:
        buf, pos, eof = "", 0, False

        def more() -> bool:
            nonlocal buf, pos, eof
            chunk = fh.read(block)
            if not chunk:
                eof = True
                return False
            buf = buf[pos:] + chunk
            pos = 0
            return True

        def skip_ws() -> None:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf) or not more():
                    return

        def decode() -> Any:
            nonlocal pos
            while True:
                try:
                    value, end = dec.raw_decode(buf, pos)
                    if end == len(buf) and not eof and more():  # a number may continue in the next block
                        continue
                    pos = end
                    return value
                except json.JSONDecodeError as exc:
                    if eof or not more():
                        raise DataError(f"invalid JSON: {exc}", file=path) from exc

        skip_ws()
        if pos >= len(buf) or buf[pos] != "{":
            raise DataError("expected a JSON object at the top level", file=path)
        pos += 1
        while True:
            skip_ws()
            if pos < len(buf) and buf[pos] == "}":
                return
            key = decode()
            skip_ws()
            if pos >= len(buf) or buf[pos] != ":":
                raise DataError(f"expected ':' after key {key!r}", file=path)
            pos += 1
            skip_ws()
            value = decode()
            yield key, value
            skip_ws()
            if pos < len(buf) and buf[pos] == ",":
                pos += 1
            elif pos < len(buf) and buf[pos] == "}":
                return
            else:
                raise DataError(f"expected ',' or '}}' after the value of {key!r}", file=path)


def structure_from_dict(d: dict, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(numbers, positions Å, cell rows Å, pbc) from a pymatgen ``Structure.as_dict()``."""
    try:
        lattice = d["lattice"]
        cell = np.asarray(lattice["matrix"], dtype=np.float64).reshape(3, 3)
        pbc = np.asarray(lattice.get("pbc", (True, True, True)), dtype=bool).reshape(3)
        numbers, positions = [], []
        for i, site in enumerate(d["sites"]):
            species = site["species"]
            if len(species) != 1 or abs(float(species[0].get("occu", 1.0)) - 1.0) > 1e-6:
                raise DataError(f"site {i} is partially occupied / disordered: {species}", file=where,
                                field="structure")
            symbol = species[0]["element"]
            if symbol not in atomic_numbers:
                raise DataError(f"site {i}: unknown element {symbol!r}", file=where, field="structure")
            numbers.append(atomic_numbers[symbol])
            if "xyz" in site:
                positions.append(site["xyz"])
            else:
                positions.append(np.asarray(site["abc"], dtype=np.float64) @ cell)
    except (KeyError, TypeError, IndexError) as exc:
        raise DataError(f"malformed pymatgen structure dict: missing/invalid {exc}", file=where,
                        field="structure") from exc
    return np.asarray(numbers), np.asarray(positions, dtype=np.float64).reshape(-1, 3), cell, pbc


def record_to_frame(rec: dict, where: str, energy_key: str) -> Frame:
    """One MPtrj record → Frame (eV, Å, virial in eV with the lam sign)."""
    numbers, pos, cell, pbc = structure_from_dict(rec["structure"], where)
    if energy_key not in rec or rec[energy_key] is None:
        raise DataError(f"no {energy_key!r}", file=where, field=energy_key)
    forces = np.asarray(rec["force"], dtype=np.float64) if rec.get("force") is not None else None
    if forces is not None and forces.shape != (numbers.size, 3):
        raise DataError(f"shape {forces.shape} != ({numbers.size}, 3)", file=where, field="force")
    virial = None
    if rec.get("stress") is not None:
        s_kbar = np.asarray(rec["stress"], dtype=np.float64).reshape(3, 3)
        virial = KBAR_TO_EV_A3 * s_kbar * abs(np.linalg.det(cell))
    return Frame(numbers=numbers, positions=pos, cell=cell, pbc=pbc, energy=float(rec[energy_key]),
                 forces=forces, virial=virial)


def iter_mptrj(path: str, limit: int | None = None, energy: str = "corrected") -> Iterator[Frame]:
    """Frames of an MPtrj JSON file, in file order."""
    energy_key = {"corrected": "corrected_total_energy", "uncorrected": "uncorrected_total_energy"}[energy]
    n = 0
    for mp_id, frames in iter_top_level_items(path):
        if not isinstance(frames, dict):
            raise DataError(f"value of {mp_id!r} is not an object of frames", file=path)
        for frame_id, rec in frames.items():
            if limit is not None and n >= limit:
                return
            yield record_to_frame(rec, f"{path}: {mp_id}/{frame_id}", energy_key)
            n += 1


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", help="MPtrj_2022.9_full.json")
    ap.add_argument("dst", help="output LAM-H5 file")
    ap.add_argument("--limit", type=int, default=None, help="stop after N frames")
    ap.add_argument("--energy", choices=("corrected", "uncorrected"), default="corrected")
    ap.add_argument("--head", default="mptrj_pbe")
    args = ap.parse_args(argv)
    n = write_h5(args.dst, iter_mptrj(args.src, args.limit, args.energy), functional="PBE/PBE+U",
                 head=args.head, source=f"MPtrj {args.src} ({args.energy}_total_energy)", progress=True)
    print(f"wrote {n} frames to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
