"""The O-H springs of ``scripts/bench/mts_resonance.py --perturb``: an exact gradient, zero at the rest length.

The resonance study relies on the perturbed inner force being conservative (so any drift is resonance, not a
curl): the spring forces must be minus the gradient of ``sum K/2 (r - r0)^2`` (finite differences), sum to
zero, and pair every H with its own O.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench" / "mts_resonance.py"


def _springs_class():
    spec = importlib.util.spec_from_file_location("mts_resonance", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.OHSprings


def test_springs_are_an_exact_gradient(water_dir: Path) -> None:
    from lam.md.run import load_structure

    springs_cls = _springs_class()
    start = load_structure(water_dir / "data_0", index=0)
    springs = springs_cls(start)
    assert len(springs.h) == 128 and len(set(springs.o.tolist())) == 64  # two H on each of the 64 O
    assert 0.9 < springs.r0 < 1.1
    atoms = start.copy()
    rng = np.random.default_rng(0)
    atoms.positions += rng.normal(0.0, 0.03, atoms.positions.shape)
    k = 2.0

    def energy(a) -> float:
        r = np.array([a.get_distance(int(i), int(j), mic=True) for i, j in zip(springs.h, springs.o)])
        return float(0.5 * k * np.sum((r - springs.r0) ** 2))

    forces = springs.forces(atoms, k)
    assert abs(forces.sum(0)).max() < 1e-12
    assert np.abs(forces).max() > 1e-3
    eps = 1e-5
    for atom in (int(springs.h[0]), int(springs.o[0]), 5):
        for axis in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[atom, axis] += eps
            minus.positions[atom, axis] -= eps
            numeric = -(energy(plus) - energy(minus)) / (2 * eps)
            assert abs(forces[atom, axis] - numeric) < 1e-6
