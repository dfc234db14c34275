"""Time ``lam.data.neighbors.neighbor_lists(..., [6.0, 4.0])`` per atom on liquid-water-density boxes.

A random box of 333 water molecules (999 atoms, 0.1 atoms/Å^3) is replicated to 10^3–10^5 atoms. Each size
runs in a fresh subprocess so that its peak RSS is its own. ASE's ``neighbor_list`` (6 Å, then the 4 Å subset
by mask) is timed as a named baseline at the sizes where one call is predicted (linearly from the previous
size) to take less than ``--ase-limit`` seconds.

    OMP_NUM_THREADS=1 python scripts/bench/bench_neighbors.py            # markdown table on stdout
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

DENSITY = 0.1  # atoms / Å^3, liquid water
BASE_MOLECULES = 333
REPLICAS = {1: (1, 1, 1), 8: (2, 2, 2), 27: (3, 3, 3), 100: (5, 5, 4)}


def water_box(n_molecules: int = BASE_MOLECULES, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Randomly oriented rigid waters on a jittered cubic grid at 0.1 atoms/Å^3: (numbers, positions, cell)."""
    rng = np.random.default_rng(seed)
    length = (3 * n_molecules / DENSITY) ** (1 / 3)
    grid = int(np.ceil(n_molecules ** (1 / 3)))
    sites = np.stack(np.meshgrid(*[np.arange(grid)] * 3, indexing="ij"), -1).reshape(-1, 3)
    sites = sites[rng.choice(len(sites), n_molecules, replace=False)]
    oxygen = (sites + 0.5 + rng.uniform(-0.15, 0.15, sites.shape)) * (length / grid)
    half = np.deg2rad(104.52) / 2
    local = 0.9572 * np.array([[np.sin(half), np.cos(half), 0.0], [-np.sin(half), np.cos(half), 0.0]])
    q, _ = np.linalg.qr(rng.standard_normal((n_molecules, 3, 3)))  # random rotations
    hydrogens = oxygen[:, None, :] + np.einsum("hk,mlk->mhl", local, q)
    positions = np.concatenate([oxygen[:, None, :], hydrogens], axis=1).reshape(-1, 3)
    numbers = np.tile([8, 1, 1], n_molecules)
    return numbers, positions, np.eye(3) * length


def replicate(positions: np.ndarray, cell: np.ndarray, reps: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.stack(np.meshgrid(*[np.arange(r) for r in reps], indexing="ij"), -1).reshape(-1, 3) @ cell
    big = (offsets[:, None, :] + positions[None]).reshape(-1, 3)
    return big, cell * np.array(reps)[:, None]


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def worker(n_rep: int, repeats: int, ase: bool) -> dict:
    """Run one size in this process and return its timings and memory."""
    import torch

    from lam.data.neighbors import neighbor_lists

    torch.set_num_threads(1)
    _, base, cell = water_box()
    positions, cell = replicate(base, cell, REPLICAS[n_rep])
    rss_before = max_rss_mb()
    neighbor_lists(positions, cell, True, [6.0, 4.0])  # warm-up
    times, cpu_times, edges = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        big, small = neighbor_lists(positions, cell, True, [6.0, 4.0])
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - c)
        edges = (big.edge_index.shape[1], small.edge_index.shape[1])
        del big, small
    out = {
        "n_atoms": len(positions),
        "edges": edges,
        "lam_s": float(np.median(times)),
        "lam_cpu_s": float(np.median(cpu_times)),
        "peak_rss_mb": max_rss_mb() - rss_before,
    }
    if ase:
        from ase import Atoms
        from ase.neighborlist import neighbor_list

        atoms = Atoms(positions=positions, cell=cell, pbc=True)
        ase_times = []
        for _ in range(repeats):
            t = time.perf_counter()
            i, j, s, d = neighbor_list("ijSd", atoms, 6.0)
            keep = d < 4.0
            _ = (i[keep], j[keep], s[keep])
            ase_times.append(time.perf_counter() - t)
            if ase_times[-1] > 5.0:  # slow sizes: one measurement is enough
                break
        assert len(i) == edges[0], "ASE and lam disagree on the number of edges"
        out["ase_s"] = float(np.median(ase_times))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--replicas",
        type=int,
        nargs="+",
        default=sorted(REPLICAS),
        choices=sorted(REPLICAS),
        help="number of copies of the 999-atom box",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ase-limit", type=float, default=20.0, help="skip ASE where it would take longer (s)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ase", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.repeats, args.ase)))
        return

    rows: list[dict] = []
    ase_per_atom = 0.0  # seconds per atom of the last ASE run; ASE is O(N), so extrapolate linearly
    for n_rep in args.replicas:
        run_ase = ase_per_atom * n_rep * 3 * BASE_MOLECULES < args.ase_limit
        cmd = [sys.executable, __file__, "--worker", str(n_rep), "--repeats", str(args.repeats)]
        result = json.loads(
            subprocess.run(cmd + (["--ase"] if run_ase else []), check=True, capture_output=True, text=True).stdout
        )
        ase_per_atom = result["ase_s"] / result["n_atoms"] if run_ase else float("inf")
        rows.append(result)
        print(f"done {result['n_atoms']} atoms", file=sys.stderr)

    def per_atom(r: dict, key: str) -> float:
        return r[key] / r["n_atoms"] * 1e6

    base, base_cpu = per_atom(rows[0], "lam_s"), per_atom(rows[0], "lam_cpu_s")
    print(
        "| atoms | edges 6 Å / 4 Å | lam ms | lam µs/atom | ratio vs 10³ | lam CPU µs/atom | CPU ratio "
        "| peak RSS MB | ASE ms | ASE µs/atom |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        us, cpu = per_atom(r, "lam_s"), per_atom(r, "lam_cpu_s")
        ase = f"{r['ase_s'] * 1e3:.0f} | {per_atom(r, 'ase_s'):.0f}" if "ase_s" in r else "not run (> limit) | –"
        print(
            f"| {r['n_atoms']} | {r['edges'][0]} / {r['edges'][1]} | {r['lam_s'] * 1e3:.1f} | {us:.1f} | "
            f"{us / base:.2f} | {cpu:.1f} | {cpu / base_cpu:.2f} | {r['peak_rss_mb']:.0f} | {ase} |"
        )


if __name__ == "__main__":
    main()
