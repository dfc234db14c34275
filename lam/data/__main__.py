"""``python -m lam.data``: convert data to LAM-H5 and summarise any readable data file.

Examples::

    python -m lam.data convert tests/data/deepmd_water_64h2o water.h5 --functional unknown --head water
    python -m lam.data convert train.extxyz train.h5 --energy-key REF_energy --forces-key REF_forces
    python -m lam.data info water.h5
    python -m lam.data info tests/data/deepmd_gete_216 --json

Bad input exits with status 2 and a one-line message naming the file, frame and field.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import chemical_symbols

from lam.data.errors import DataError
from lam.data.formats import FORMATS, H5Reader, guess_format, read_any, write_h5

__all__ = ["main", "summarize"]

_BLOCK_ATOMS = 1 << 20


class _Stats:
    """Running totals for ``info``."""

    def __init__(self) -> None:
        self.n_frames = 0
        self.sizes: list[np.ndarray] = []
        self.element_counts = np.zeros(119, dtype=np.int64)
        self.label_counts = {"energy": 0, "forces": 0, "virial": 0}
        self.e_per_atom: list[np.ndarray] = []
        self.f_sumsq = 0.0
        self.f_count = 0

    def add_block(
        self,
        sizes: np.ndarray,
        numbers: np.ndarray,
        energy: np.ndarray,
        has_energy: np.ndarray,
        forces: np.ndarray,
        has_forces: np.ndarray,
        has_virial: np.ndarray,
    ) -> None:
        """Add a block of frames: per-frame ``sizes``/``energy``/``has_*``, per-atom ``numbers``/``forces``."""
        self.n_frames += len(sizes)
        self.sizes.append(sizes)
        self.element_counts += np.bincount(numbers, minlength=119)[:119]
        self.label_counts["energy"] += int(has_energy.sum())
        self.label_counts["forces"] += int(has_forces.sum())
        self.label_counts["virial"] += int(has_virial.sum())
        self.e_per_atom.append(energy[has_energy] / sizes[has_energy])
        f = forces[np.repeat(has_forces, sizes)]
        self.f_sumsq += float(np.square(f).sum())
        self.f_count += int(f.size)

    def result(self) -> dict[str, Any]:
        sizes = np.concatenate(self.sizes) if self.sizes else np.zeros(0, dtype=np.int64)
        epa = np.concatenate(self.e_per_atom) if self.e_per_atom else np.zeros(0)
        present = np.nonzero(self.element_counts)[0]
        return {
            "n_frames": self.n_frames,
            "n_atoms": int(sizes.sum()),
            "n_atoms_min": int(sizes.min()) if sizes.size else 0,
            "n_atoms_max": int(sizes.max()) if sizes.size else 0,
            "elements": [chemical_symbols[z] for z in present],
            "element_counts": {chemical_symbols[z]: int(self.element_counts[z]) for z in present},
            "labels": [k for k, v in self.label_counts.items() if v > 0],
            "label_counts": dict(self.label_counts),
            "energy_per_atom_mean": float(epa.mean()) if epa.size else None,
            "energy_per_atom_std": float(epa.std()) if epa.size else None,
            "force_rms": float(np.sqrt(self.f_sumsq / self.f_count)) if self.f_count else None,
        }


def _summarize_h5(path: str, stats: _Stats) -> dict[str, Any]:
    reader = H5Reader(path)
    with reader:
        offsets = reader.offsets
        flags = {k: reader.read_array(k).astype(bool) for k in ("has_energy", "has_forces", "has_virial")}
        energy = reader.read_array("energy")
        start = 0
        while start < len(reader):  # blocks of ~1M atoms so that huge files fit in memory
            stop = int(np.searchsorted(offsets, offsets[start] + _BLOCK_ATOMS, side="right")) - 1
            stop = min(max(stop, start + 1), len(reader))
            a, b = int(offsets[start]), int(offsets[stop])
            sizes = np.diff(offsets[start : stop + 1])
            numbers = reader._read("numbers", slice(a, b), start).astype(np.int64)
            forces = reader._read("forces", slice(a, b), start)
            frames = slice(start, stop)
            stats.add_block(
                sizes,
                numbers,
                energy[frames],
                flags["has_energy"][frames],
                forces,
                flags["has_forces"][frames],
                flags["has_virial"][frames],
            )
            start = stop
        return {"functional": reader.attrs.get("functional"), "head": reader.attrs.get("head")}


def summarize(path: str | Path, format: str | None = None, **kw: Any) -> dict[str, Any]:
    """Counts and label statistics of any readable data (used by ``info``).

    Keys: ``file``, ``format``, ``n_frames``, ``n_atoms`` (total), ``n_atoms_min``/``max`` (per frame),
    ``elements`` (symbols sorted by Z), ``element_counts``, ``labels`` (label names present in at least one
    frame), ``label_counts`` (frames having each label), ``functional`` and ``head`` (LAM-H5 only, else
    ``None``), ``energy_per_atom_mean``/``std`` (eV), ``force_rms`` (eV/Å, RMS of all force components).
    """
    family = FORMATS[format.lower()] if format and format.lower() in FORMATS else None
    family = family or (guess_format(path) if format is None else None)
    stats = _Stats()
    meta: dict[str, Any] = {"functional": None, "head": None}
    if family == "lam-h5":
        meta = _summarize_h5(str(path), stats)
    else:
        for frame in read_any(path, format=format, **kw):
            has_e = frame.energy is not None
            has_f = frame.forces is not None
            stats.add_block(
                np.array([frame.n_atoms]),
                frame.numbers,
                np.array([frame.energy if has_e else 0.0]),
                np.array([has_e]),
                frame.forces if has_f else np.zeros((frame.n_atoms, 3)),
                np.array([has_f]),
                np.array([frame.virial is not None]),
            )
        family = family or format
    return {"file": str(path), "format": family, **stats.result(), **meta}


def _print_info(s: dict[str, Any]) -> None:
    def fmt(x: float | None, unit: str) -> str:
        return "n/a" if x is None else f"{x:.6g} {unit}"

    n = s["n_frames"]
    counts = ", ".join(f"{el} {s['element_counts'][el]}" for el in s["elements"])
    labels = ", ".join(f"{k} {v}/{n}" for k, v in s["label_counts"].items())
    rows = [
        ("file", f"{s['file']} ({s['format']})"),
        ("frames", str(n)),
        ("atoms", f"{s['n_atoms']} total, {s['n_atoms_min']}..{s['n_atoms_max']} per frame"),
        ("elements", f"{' '.join(s['elements'])}  (atoms: {counts})"),
        ("labels", labels),
        ("functional", s["functional"] if s["functional"] is not None else "not stored in this format"),
        ("energy/atom", f"mean {fmt(s['energy_per_atom_mean'], 'eV')}, std {fmt(s['energy_per_atom_std'], 'eV')}"),
        ("force RMS", fmt(s["force_rms"], "eV/Å") + " (per component)"),
    ]
    if s.get("head"):
        rows.insert(6, ("head", s["head"]))
    for key, value in rows:
        print(f"{key:<12} {value}")


def _reader_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "validate": not args.no_validate,
        "min_distance": args.min_distance,
        "on_close": args.on_close,
    }
    for key in ("energy_key", "forces_key", "stress_key", "virial_key"):
        if getattr(args, key) is not None:
            kw[key] = getattr(args, key)
    return kw


def _cmd_convert(args: argparse.Namespace) -> int:
    dst = Path(args.dst)
    if dst.exists() and not args.overwrite:
        raise DataError("destination exists; pass --overwrite to replace it", file=str(dst))
    frames = read_any(args.src, format=args.format, **_reader_kwargs(args))
    n = write_h5(
        dst,
        frames,
        functional=args.functional,
        head=args.head,
        source=args.source if args.source is not None else str(args.src),
        validate=False,  # the reader already validated with the source file's name in its messages
        progress=not args.quiet,
        compression=args.compression,
    )
    n_atoms = H5Reader(dst).attrs["n_atoms_total"]
    print(f"wrote {n} frames, {n_atoms} atoms to {dst}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    summary = summarize(args.file, format=args.format, **_reader_kwargs(args))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_info(summary)
    return 0


def _add_reader_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=sorted(FORMATS), help="input format (default: guessed from the path)")
    p.add_argument("--energy-key", help="ASE formats: atoms.info key of the energy (eV), e.g. REF_energy")
    p.add_argument("--forces-key", help="ASE formats: atoms.arrays key of the forces (eV/Å)")
    p.add_argument("--stress-key", help="ASE formats: atoms.info key of the stress (eV/Å^3); virial = -stress*V")
    p.add_argument("--virial-key", help="ASE formats: atoms.info key of the virial (eV, W = -dE/dstrain)")
    p.add_argument("--min-distance", type=float, default=0.5, help="smallest allowed interatomic distance, Å")
    p.add_argument(
        "--on-close", choices=("error", "warn", "ignore"), default="error", help="what to do with closer atoms"
    )
    p.add_argument("--no-validate", action="store_true", help="skip value checks (shapes are always checked)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lam.data",
        description="Convert atomistic data to LAM-H5 and inspect data files (see docs/data-format.md).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{convert,info}")

    c = sub.add_parser(
        "convert",
        help="convert extxyz / deepmd/npy / anything ASE reads into a LAM-H5 file",
        description="Read SRC (a file, a deepmd/npy system or a tree of systems), validate every frame and "
        "write a LAM-H5 file DST atomically.",
    )
    c.add_argument("src", help="input file or directory")
    c.add_argument("dst", help="output LAM-H5 file (.h5)")
    c.add_argument("--functional", default="unknown", help="DFT functional of the labels, e.g. PBE (default: unknown)")
    c.add_argument("--head", default="", help="name of the model head these labels train (default: none)")
    c.add_argument("--source", help="provenance text stored in the file (default: SRC as given)")
    c.add_argument("--compression", choices=("gzip", "lzf", "none"), default="gzip", help="HDF5 filter")
    c.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_reader_options(c)
    c.set_defaults(func=_cmd_convert)

    i = sub.add_parser(
        "info",
        help="summarise any readable data file: counts, elements, labels, energy and force statistics",
        description="Print frame and atom counts, elements, labels present, functional, energy per atom "
        "mean/std and force RMS of FILE (LAM-H5 or any format `convert` reads).",
    )
    i.add_argument("file", help="LAM-H5 file, deepmd/npy directory, extxyz …")
    i.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    _add_reader_options(i)
    i.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (2 with a one-line message on bad data)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
