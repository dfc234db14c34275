#!/usr/bin/env python
"""Benchmark: dataset statistics (element references, force RMS) on a synthetic LAM-H5 file.

Writes ``--frames`` molecules of 5–30 atoms drawn from H, C, N, O, F, S (energy = Σ references + noise,
random forces) to a LAM-H5 file in a temporary folder, then times, on the same file:

* ``lam``      — :func:`lam.data.stats.compute_statistics` on the file (chunked numpy fast path, streaming QR);
* ``lam-frames`` — the same function fed frame by frame from ``H5Reader.iter_frames()``;
* ``naive``    — the baseline: a per-frame Python loop over ``H5Reader.iter_frames()`` that builds the count
  matrix row by row and calls ``np.linalg.lstsq`` at the end (roughly what DeePMD-kit does).

Peak Python-heap memory is measured with ``tracemalloc`` in a separate run of each method. Usage::

    python scripts/bench/bench_stats.py --frames 100000
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from lam.data.formats.h5 import H5Reader, write_h5
from lam.data.frame import Frame
from lam.data.stats import compute_statistics

REFS = {1: -13.6, 6: -1029.5, 7: -1485.3, 8: -2041.8, 9: -2715.6, 16: -10830.0}
WEIGHTS = np.array([0.45, 0.3, 0.08, 0.1, 0.03, 0.04])


def synthetic_frames(n: int, seed: int = 0) -> Iterator[Frame]:
    """Random 'molecules' (5–30 atoms, 4–6 distinct elements each) with exact references + 10 meV/atom noise."""
    rng = np.random.default_rng(seed)
    zs = np.array(list(REFS))
    ref = np.array(list(REFS.values()))
    for _ in range(n):
        n_at = int(rng.integers(5, 31))
        k = int(rng.integers(4, 7))
        allowed = rng.choice(zs.size, size=k, replace=False)
        p = WEIGHTS[allowed] / WEIGHTS[allowed].sum()
        idx = allowed[rng.choice(k, size=n_at, p=p)]
        energy = float(ref[idx].sum() + 0.01 * n_at * rng.standard_normal())
        pos = rng.uniform(0.0, 3.0 * n_at ** (1 / 3), size=(n_at, 3))
        yield Frame(numbers=zs[idx], positions=pos, energy=energy, forces=rng.normal(0, 1.0, (n_at, 3)))


def naive_baseline(path: Path) -> dict[str, float]:
    """Per-frame loop: count matrix row by row, then one dense lstsq (no streaming, O(F) memory)."""
    reader = H5Reader(path)
    type_map: list[int] = []
    rows, energies = [], []
    f_sq, n_f = 0.0, 0
    for frame in reader.iter_frames():
        row = {}
        for z in frame.numbers:
            z = int(z)
            if z not in type_map:
                type_map.append(z)
            row[z] = row.get(z, 0) + 1
        rows.append(row)
        energies.append(frame.energy)
        if frame.forces is not None:
            f_sq += float((frame.forces**2).sum())
            n_f += frame.forces.size
    a = np.zeros((len(rows), len(type_map)))
    for i, row in enumerate(rows):
        for z, c in row.items():
            a[i, type_map.index(z)] = c
    x, *_ = np.linalg.lstsq(a, np.asarray(energies), rcond=None)
    return {"refs": dict(zip(type_map, x)), "force_rms": float(np.sqrt(f_sq / n_f))}


def timed(fn: Callable[[], object], memory: bool) -> tuple[float, float, object]:
    """(wall seconds, peak MiB or nan, result)."""
    if memory:
        tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    peak = float("nan")
    if memory:
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return dt, peak, out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a Markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats (median reported)")
    ap.add_argument("--chunk-frames", type=int, default=65536)
    args = ap.parse_args(argv)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.h5"
        t0 = time.perf_counter()
        write_h5(path, synthetic_frames(args.frames), functional="synthetic", head="bench", validate=False)
        n_atoms = int(H5Reader(path).n_atoms.sum())
        print(f"wrote {args.frames} frames / {n_atoms} atoms in {time.perf_counter() - t0:.1f} s "
              f"({path.stat().st_size / 2**20:.1f} MiB)")
        methods: dict[str, Callable[[], object]] = {
            "lam (LAM-H5 fast path)": lambda: compute_statistics(path, chunk_frames=args.chunk_frames),
            "lam (Frame iterator)": lambda: compute_statistics(H5Reader(path).iter_frames()),
            "naive per-frame loop + lstsq": lambda: naive_baseline(path),
        }
        results = {}
        for name, fn in methods.items():
            times = [timed(fn, memory=False)[0] for _ in range(args.repeats)]
            _, peak, out = timed(fn, memory=True)
            results[name] = (float(np.median(times)), peak, out)
        fast = results["lam (LAM-H5 fast path)"]
        naive = results["naive per-frame loop + lstsq"]
        # the two must agree
        from ase.data import chemical_symbols

        diff = max(abs(fast[2].element_energies[chemical_symbols[z]] - e) for z, e in naive[2]["refs"].items())
        print(f"\nmax |reference difference| lam vs naive: {diff:.2e} eV; "
              f"force RMS lam {fast[2].force_rms:.6f} vs naive {naive[2]['force_rms']:.6f}")
        print(f"residual RMS per atom after references: {fast[2].residual_rms_per_atom * 1000:.2f} meV/atom "
              f"(raw energy/atom std {fast[2].energy_per_atom_std:.1f} eV)\n")
        print("| method | wall time (s, median) | peak traced memory (MiB) | speed-up vs naive |")
        print("|---|---|---|---|")
        for name, (t, peak, _) in results.items():
            print(f"| {name} | {t:.3f} | {peak:.1f} | {naive[0] / t:.1f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
