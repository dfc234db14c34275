"""A plain, numpy-backed structure with optional DFT labels: the unit every reader yields."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Frame:
    """One structure. Positions in Å, energy in eV, forces in eV/Å, virial in eV (``W = -dE/dstrain``).

    ``cell`` is a (3, 3) array of row lattice vectors (zeros when there is no cell); ``pbc`` a (3,) bool array.
    Missing labels are ``None``.
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))
    energy: float | None = None
    forces: np.ndarray | None = None
    virial: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        self.positions = np.asarray(self.positions, dtype=np.float64)
        self.cell = np.asarray(self.cell, dtype=np.float64).reshape(3, 3)
        self.pbc = np.broadcast_to(np.asarray(self.pbc, dtype=bool), (3,)).copy()
        if self.energy is not None:
            self.energy = float(np.asarray(self.energy).reshape(()))
        if self.forces is not None:
            self.forces = np.asarray(self.forces, dtype=np.float64)
        if self.virial is not None:
            self.virial = np.asarray(self.virial, dtype=np.float64).reshape(3, 3)

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.cell)))
