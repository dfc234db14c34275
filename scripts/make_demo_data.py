"""Make the demo datasets: small H/C/N/O molecules labelled with PySCF RKS / def2-SVP in three functionals.

Pipeline (all steps seeded and resumable; see ``lam/data/demo/README.md`` for the provenance):

1. One harmonic Hessian per molecule (PBE/def2-SVP, analytic, at the ASE reference geometry), cached as
   ``<cache>/hessians/<molecule>.npz``.
2. Geometries by classical normal-mode sampling: every normal coordinate ``q_k`` (mass weighted) is drawn
   from ``N(0, kT / omega_k^2)`` at a per-frame temperature, frequencies floored at ``--min-freq``.
3. Energy + forces with RKS, ``conv_tol=1e-10``, DFT-grid response in the gradient (forces are the exact
   derivative of the stored energies). Each label is appended as one JSON line to
   ``<cache>/labels_<xc>_<basis>.jsonl`` keyed by a hash of (molecule, seed, temperature, xc, basis, settings),
   so a killed run restarts where it stopped.
4. When ``lam.data.formats.h5.write_h5`` exists, write ``lam/data/demo/demo_<head>.h5`` and the manifest
   entries ``datasets_manifest/demo_<head>.yaml`` (with the file's sha256).

Run from the repository root::

    python scripts/make_demo_data.py                 # label (resume) + write
    python scripts/make_demo_data.py --write-only    # only write the .h5 / YAML files from the cache
"""

from __future__ import annotations

import os

# One OpenMP / BLAS thread per process: set before numpy or pyscf are imported (workers inherit it).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import multiprocessing as mp  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor, as_completed  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BASIS = "def2-svp"
CONV_TOL = 1e-10
HESSIAN_XC = "pbe"
MIN_FREQ_CM = 400.0
MAX_BOND_CHANGE = 0.2  # Å, see plausible()
MIN_DISTANCE = 0.75  # Å
# Per-frame temperatures, cycled over the frames of a molecule (K).
TEMPERATURES = (300.0, 300.0, 500.0, 500.0, 700.0, 1000.0)

# head -> (PySCF xc name, molecules, frames per molecule).  Keep to H, C, N, O and <= 8 atoms.
FUNCTIONALS: dict[str, tuple[str, tuple[str, ...], int]] = {
    "pbe": ("pbe", ("H2O", "CH4", "NH3", "water_dimer", "CH3OH"), 16),
    "wb97x": ("wb97x", ("H2O", "CH3OH", "H2CO", "C2H4", "C2H2"), 16),
    "rpbe": ("rpbe", ("H2O", "NH3", "HCN", "CH3NH2", "CO2"), 16),
}
FUNCTIONAL_LABEL = {"pbe": "PBE", "wb97x": "wB97X", "rpbe": "RPBE"}
SCF_TAG = f"rks;conv_tol={CONV_TOL:g};grid_response=1"


def build_molecule(name: str):
    """ASE reference geometry (G2 set; the water dimer from S22; methylamine is G2's ``H3CNH2``)."""
    from ase.build import molecule
    from ase.collections import s22

    if name == "water_dimer":
        return s22["Water_dimer"]
    if name == "CH3NH2":
        return molecule("H3CNH2")
    return molecule(name)


# --------------------------------------------------------------------------------------------- PySCF work
def _pyscf_mol(numbers: np.ndarray, positions: np.ndarray, basis: str):
    from lam.calculators.pyscf import build_mol

    return build_mol(numbers, positions, basis, charge=0, spin=0)


def _worker_init() -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    from pyscf import lib

    lib.num_threads(1)


def pyscf_energy_forces(
    numbers: np.ndarray, positions: np.ndarray, xc: str, basis: str = BASIS, conv_tol: float = CONV_TOL
) -> tuple[float, np.ndarray, dict]:
    """RKS energy (eV) and forces (eV/Å, with DFT-grid response) for a closed-shell neutral molecule."""
    from lam.calculators.pyscf import ks_energy_forces

    energy, forces, e_hartree = ks_energy_forces(numbers, positions, xc, basis, charge=0, spin=0, conv_tol=conv_tol)
    return energy, forces, {"e_hartree": e_hartree}


def _hessian_task(name: str) -> tuple[str, dict]:
    """Analytic PBE/def2-SVP Hessian (eV/Å^2, (3N, 3N)) at the reference geometry."""
    from ase.units import Bohr, Hartree
    from pyscf import dft

    t0 = time.perf_counter()
    atoms = build_molecule(name)
    mol = _pyscf_mol(atoms.numbers, atoms.positions, BASIS)
    mf = dft.RKS(mol)
    mf.xc = HESSIAN_XC
    mf.conv_tol = CONV_TOL
    mf.kernel()
    h = mf.Hessian().kernel()  # (N, N, 3, 3) Hartree/Bohr^2
    n = len(atoms)
    h = h.transpose(0, 2, 1, 3).reshape(3 * n, 3 * n) * Hartree / Bohr**2
    return name, {
        "hessian": 0.5 * (h + h.T),
        "numbers": atoms.numbers,
        "positions": atoms.positions,
        "seconds": time.perf_counter() - t0,
    }


def _label_task(job: dict) -> dict:
    t0 = time.perf_counter()
    numbers = np.asarray(job["numbers"])
    positions = np.asarray(job["positions"])
    energy, forces, extra = pyscf_energy_forces(numbers, positions, job["xc"], job["basis"])
    out = dict(job)
    out.update(energy=energy, forces=forces.tolist(), seconds=time.perf_counter() - t0, **extra)
    return out


# ------------------------------------------------------------------------------------ geometry sampling
def vibrational_modes(
    hessian: np.ndarray, masses: np.ndarray, positions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mass-weighted normal modes with translations and rotations projected out.

    Returns ``(lam, modes)``: eigenvalues ``omega^2`` in eV/(Å^2 amu) and orthonormal mass-weighted mode
    vectors as columns of a ``(3N, n_vib)`` array.
    """
    n = len(masses)
    sqm = np.sqrt(np.repeat(masses, 3))
    h_mw = hessian / np.outer(sqm, sqm)
    com = (masses[:, None] * positions).sum(0) / masses.sum()
    r = positions - com
    ext = []
    for k in range(3):  # translations
        v = np.zeros((n, 3))
        v[:, k] = 1.0
        ext.append((v * np.sqrt(masses)[:, None]).ravel())
    for k in range(3):  # rotations about x, y, z
        axis = np.zeros(3)
        axis[k] = 1.0
        ext.append((np.cross(axis, r) * np.sqrt(masses)[:, None]).ravel())
    u, s, _ = np.linalg.svd(np.array(ext).T, full_matrices=True)
    n_ext = int((s > 1e-6 * s.max()).sum())  # 5 for a linear molecule
    internal = u[:, n_ext:]
    lam, v = np.linalg.eigh(internal.T @ h_mw @ internal)
    return lam, internal @ v


def sample_geometry(
    positions: np.ndarray,
    masses: np.ndarray,
    lam: np.ndarray,
    modes: np.ndarray,
    temperature: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Classical harmonic (Boltzmann) sample at ``temperature``: ``q_k ~ N(0, kT/omega_k^2)``."""
    from ase.units import _amu, _c, _e, kB

    # omega^2 in eV/(Å^2 amu) -> wavenumber; floor soft / imaginary modes at MIN_FREQ_CM.
    to_cm = np.sqrt(_e / _amu) * 1e10 / (2 * np.pi * _c * 100.0)
    freq_cm = np.sqrt(np.abs(lam)) * to_cm
    freq_cm = np.maximum(freq_cm, MIN_FREQ_CM)
    omega2 = (freq_cm / to_cm) ** 2
    q = rng.normal(size=len(lam)) * np.sqrt(kB * temperature / omega2)
    dx = (modes @ q) / np.sqrt(np.repeat(masses, 3))
    return positions + dx.reshape(-1, 3)


def plausible(numbers: np.ndarray, reference: np.ndarray, positions: np.ndarray) -> bool:
    """Reject linearised-rotation artefacts: every covalent bond of the reference geometry (pairs closer than
    1.25x the sum of covalent radii) keeps its length within ``MAX_BOND_CHANGE`` and no two atoms come closer
    than ``MIN_DISTANCE``."""
    from ase.data import covalent_radii

    def dist(p: np.ndarray) -> np.ndarray:
        return np.linalg.norm(p[:, None] - p[None], axis=-1)

    d0, d = dist(reference), dist(positions)
    radii = covalent_radii[numbers]
    bonded = (d0 < 1.25 * (radii[:, None] + radii[None])) & ~np.eye(len(numbers), dtype=bool)
    off = ~np.eye(len(numbers), dtype=bool)
    return bool(np.all(np.abs(d - d0)[bonded] <= MAX_BOND_CHANGE) and np.all(d[off] >= MIN_DISTANCE))


def stable_seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "little")


def label_key(
    molecule: str, seed: int, temperature: float, xc: str, basis: str, positions: np.ndarray | list
) -> str:
    """Content address of one label: the structure (positions to 1e-8 Å) and the level of theory."""
    pos = np.round(np.asarray(positions, dtype=np.float64), 8) + 0.0  # + 0.0 turns -0.0 into 0.0
    text = json.dumps([molecule, seed, temperature, xc, basis, SCF_TAG, pos.tolist()])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


# --------------------------------------------------------------------------------------------- caching
def load_hessians(cache: Path, names: list[str], workers: int) -> dict[str, dict]:
    hdir = cache / "hessians"
    hdir.mkdir(parents=True, exist_ok=True)
    out: dict[str, dict] = {}
    missing = []
    for name in names:
        f = hdir / f"{name}.npz"
        if f.exists():
            with np.load(f) as z:
                out[name] = {k: z[k] for k in z.files}
        else:
            missing.append(name)
    if missing:
        print(f"[hessian] computing {len(missing)}: {', '.join(missing)}", flush=True)
        with _pool(workers) as pool:
            futs = [pool.submit(_hessian_task, n) for n in missing]
            for fut in as_completed(futs):
                name, data = fut.result()
                np.savez(hdir / f"{name}.npz", **data)
                out[name] = data
                print(f"[hessian] {name}: {float(data['seconds']):.1f} s", flush=True)
    return out


def read_cache(path: Path) -> dict[str, dict]:
    """Label records by key; a truncated last line (killed run) is ignored."""
    records: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            # Re-derive the key from the record itself, so the cache stays valid when sampling settings change.
            key = label_key(rec["molecule"], rec["seed"], rec["temperature"], rec["xc"], rec["basis"],
                            rec["positions"])
            records[key] = rec
    return records


def _pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init)


# ----------------------------------------------------------------------------------------- the jobs
@dataclass
class Job:
    head: str
    molecule: str
    index: int
    seed: int
    temperature: float
    numbers: np.ndarray
    positions: np.ndarray

    def as_task(self, xc: str) -> dict:
        return {
            "key": label_key(self.molecule, self.seed, self.temperature, xc, BASIS, self.positions),
            "head": self.head,
            "molecule": self.molecule,
            "index": self.index,
            "seed": self.seed,
            "temperature": self.temperature,
            "xc": xc,
            "basis": BASIS,
            "numbers": self.numbers.tolist(),
            "positions": self.positions.tolist(),
        }


def make_jobs(hessians: dict[str, dict]) -> dict[str, list[Job]]:
    from ase.data import atomic_masses

    jobs: dict[str, list[Job]] = {}
    for head, (_xc, names, n_per) in FUNCTIONALS.items():
        jobs[head] = []
        for name in names:
            h = hessians[name]
            numbers, pos0 = np.asarray(h["numbers"]), np.asarray(h["positions"])
            masses = atomic_masses[numbers]
            lam, modes = vibrational_modes(np.asarray(h["hessian"]), masses, pos0)
            for i in range(n_per):
                seed = stable_seed("lam-demo", head, name, i)
                temp = TEMPERATURES[i % len(TEMPERATURES)]
                rng = np.random.default_rng(seed)
                for _ in range(1000):
                    pos = sample_geometry(pos0, masses, lam, modes, temp, rng)
                    if plausible(numbers, pos0, pos):
                        break
                else:
                    raise RuntimeError(f"no plausible sample for {name} at {temp} K")
                jobs[head].append(Job(head, name, i, seed, temp, numbers, pos))
    return jobs


def run_labels(jobs: dict[str, list[Job]], cache: Path, workers: int) -> dict[str, dict[str, dict]]:
    caches = {head: cache / f"labels_{FUNCTIONALS[head][0]}_{BASIS}.jsonl" for head in jobs}
    done = {head: read_cache(path) for head, path in caches.items()}
    todo = []
    for head, hjobs in jobs.items():
        for job in hjobs:
            task = job.as_task(FUNCTIONALS[head][0])
            if task["key"] not in done[head]:
                todo.append(task)
    n_total = sum(len(j) for j in jobs.values())
    print(f"[label] {n_total - len(todo)}/{n_total} labels cached, {len(todo)} to compute", flush=True)
    if not todo:
        return done
    # Most expensive first (larger molecules, wB97X) for better load balance.
    todo.sort(key=lambda t: (-len(t["numbers"]) * (2 if t["xc"] == "wb97x" else 1), t["key"]))
    t0 = time.perf_counter()
    with _pool(workers) as pool:
        futs = [pool.submit(_label_task, t) for t in todo]
        for k, fut in enumerate(as_completed(futs), 1):
            rec = fut.result()
            with caches[rec["head"]].open("a") as fh:
                fh.write(json.dumps(rec) + "\n")
            done[rec["head"]][rec["key"]] = rec  # the key the task was submitted under
            el = time.perf_counter() - t0
            print(
                f"[label] {k}/{len(todo)} {rec['head']:5s} {rec['molecule']:11s} #{rec['index']:2d} "
                f"T={rec['temperature']:.0f}K {rec['seconds']:.2f} s  (elapsed {el:.0f} s, "
                f"eta {el / k * (len(todo) - k):.0f} s)",
                flush=True,
            )
    print(f"[label] computed {len(todo)} labels in {time.perf_counter() - t0:.1f} s wall", flush=True)
    return done


# -------------------------------------------------------------------------------------------- outputs
CITATION = (
    "Sun, Q. et al. Recent developments in the PySCF program package. J. Chem. Phys. 153, 024109 (2020); "
    "Sun, Q. et al. PySCF: the Python-based simulations of chemistry framework. WIREs Comput. Mol. Sci. 8, "
    "e1340 (2018); Weigend, F. & Ahlrichs, R. Phys. Chem. Chem. Phys. 7, 3297 (2005) (def2-SVP)"
)
FUNCTIONAL_REFS = {
    "pbe": "Perdew, Burke & Ernzerhof, Phys. Rev. Lett. 77, 3865 (1996)",
    "wb97x": "Chai & Head-Gordon, J. Chem. Phys. 128, 084106 (2008)",
    "rpbe": "Hammer, Hansen & Norskov, Phys. Rev. B 59, 7413 (1999)",
}


def collect_frames(head: str, jobs: list[Job], records: dict[str, dict]) -> list:
    from lam.data.frame import Frame

    xc = FUNCTIONALS[head][0]
    frames = []
    for job in jobs:
        task = job.as_task(xc)
        rec = records.get(task["key"])
        if rec is None:
            raise RuntimeError(f"label missing from cache for {head} {job.molecule} #{job.index}: run labelling")
        if not np.allclose(rec["positions"], job.positions, atol=1e-8):
            raise RuntimeError(f"cached positions differ for {head} {job.molecule} #{job.index}: stale cache")
        frames.append(
            Frame(
                numbers=np.asarray(rec["numbers"]),
                positions=np.asarray(rec["positions"]),
                energy=rec["energy"],
                forces=np.asarray(rec["forces"]),
            )
        )
    return frames


def write_outputs(jobs: dict[str, list[Job]], records: dict[str, dict[str, dict]], out_dir: Path) -> None:
    import yaml
    from ase.data import chemical_symbols

    from lam.data.manifest import sha256_file

    try:
        from lam.data.formats.h5 import write_h5
    except ImportError as exc:  # the writer lands in a separate change
        print(f"[write] lam.data.formats.h5.write_h5 not available yet ({exc}); labels are cached", flush=True)
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_dir = REPO / "datasets_manifest"
    for head, hjobs in jobs.items():
        frames = collect_frames(head, hjobs, records[head])
        path = out_dir / f"demo_{head}.h5"
        xc = FUNCTIONALS[head][0]
        source = (
            f"lam scripts/make_demo_data.py: PySCF RKS {FUNCTIONAL_LABEL[head]}/{BASIS}, conv_tol={CONV_TOL:g}, "
            f"grid response in forces; normal-mode sampling 300-1000 K"
        )
        write_h5(path, frames, functional=FUNCTIONAL_LABEL[head], head=head, source=source)
        path.chmod(0o644)  # package data: world-readable
        elements = sorted({int(z) for f in frames for z in f.numbers})
        molecules = list(dict.fromkeys(j.molecule for j in hjobs))
        entry = {
            "name": f"demo_{head}",
            "head": head,
            "functional": FUNCTIONAL_LABEL[head],
            "basis": BASIS,
            "format": "lam-h5",
            "path": f"../{path.relative_to(REPO).as_posix()}",
            "sha256": sha256_file(path),
            "size_bytes": path.stat().st_size,
            "units": {"energy": "eV", "length": "angstrom", "forces": "eV/angstrom"},
            "elements": [chemical_symbols[z] for z in elements],
            "n_frames": len(frames),
            "license": "CC-BY-4.0",
            "citation": f"{CITATION}; {FUNCTIONAL_REFS[head]}",
            "description": (
                f"Demo set: {', '.join(molecules)} ({FUNCTIONALS[head][2]} frames each), non-periodic, "
                f"sampled around the ASE reference geometries by classical normal-mode displacements at "
                f"300-1000 K, labelled with PySCF restricted Kohn-Sham xc='{xc}'/{BASIS} "
                f"(conv_tol={CONV_TOL:g}, forces with DFT-grid response)."
            ),
            "notes": (
                "Generated by scripts/make_demo_data.py (PySCF is Apache-2.0; the labels are ours, CC-BY-4.0); "
                "provenance and timings in lam/data/demo/README.md."
            ),
        }
        text = yaml.safe_dump(entry, sort_keys=False, width=110, default_flow_style=None)
        (manifest_dir / f"demo_{head}.yaml").write_text(text)
        print(f"[write] {path.relative_to(REPO)}: {len(frames)} frames, {path.stat().st_size / 1e3:.0f} kB")


def summarize(records: dict[str, dict[str, dict]], jobs: dict[str, list[Job]]) -> None:
    for head, hjobs in jobs.items():
        xc = FUNCTIONALS[head][0]
        secs = [records[head][j.as_task(xc)["key"]]["seconds"] for j in hjobs if
                j.as_task(xc)["key"] in records[head]]
        if secs:
            print(f"[time] {head}: {len(secs)} labels, seconds per label (worker wall) median {np.median(secs):.2f} "
                  f"max {np.max(secs):.2f}, sum {np.sum(secs):.0f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache-dir", type=Path, default=REPO / "build" / "demo_cache")
    p.add_argument("--out-dir", type=Path, default=REPO / "lam" / "data" / "demo")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--write-only", action="store_true", help="do not compute, only write from the cache")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    names = sorted({m for _, mols, _ in FUNCTIONALS.values() for m in mols})
    hessians = load_hessians(args.cache_dir, names, 0 if args.write_only else args.workers)
    jobs = make_jobs(hessians)
    if args.write_only:
        records = {h: read_cache(args.cache_dir / f"labels_{FUNCTIONALS[h][0]}_{BASIS}.jsonl") for h in jobs}
    else:
        records = run_labels(jobs, args.cache_dir, args.workers)
    summarize(records, jobs)
    write_outputs(jobs, records, args.out_dir)
    print(f"[done] total wall time {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
