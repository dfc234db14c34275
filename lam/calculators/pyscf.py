"""An ASE calculator around PySCF restricted/unrestricted Kohn–Sham DFT for molecules (non-periodic).

Stored forces are the exact derivative of the stored energy: the DFT grid response is included in the gradient
and the SCF is converged tightly. Energies in eV, forces in eV/Å.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.units import Bohr, Hartree


class PySCFCalculator(Calculator):
    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, xc: str = "pbe", basis: str = "def2-svp", charge: int = 0, spin: int | None = None,
                 conv_tol: float = 1e-10, grid_level: int = 3, grid_response: bool = True, max_memory: int = 2000,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.xc, self.basis, self.charge, self.spin = xc, basis, charge, spin
        self.conv_tol, self.grid_level, self.grid_response, self.max_memory = (
            conv_tol, grid_level, grid_response, max_memory)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:  # noqa: ANN001
        super().calculate(atoms, properties, system_changes)
        from pyscf import dft, gto

        if self.atoms.pbc.any():
            raise ValueError("PySCFCalculator handles molecules only (pbc must be False)")
        n_electrons = int(self.atoms.numbers.sum()) - self.charge
        spin = self.spin if self.spin is not None else n_electrons % 2
        mol = gto.M(
            atom=[(int(z), tuple(p)) for z, p in zip(self.atoms.numbers, self.atoms.positions)],
            unit="Angstrom", basis=self.basis, charge=self.charge, spin=spin, verbose=0,
            max_memory=self.max_memory,
        )
        mf = dft.RKS(mol) if spin == 0 else dft.UKS(mol)
        mf.xc = self.xc
        mf.conv_tol = self.conv_tol
        mf.grids.level = self.grid_level
        energy = mf.kernel()
        if not mf.converged:
            raise RuntimeError(f"PySCF SCF did not converge ({self.xc}/{self.basis})")
        grad = mf.nuc_grad_method()
        grad.grid_response = self.grid_response
        gradient = grad.kernel()
        self.results["energy"] = float(energy) * Hartree
        self.results["free_energy"] = self.results["energy"]
        self.results["forces"] = -np.asarray(gradient) * Hartree / Bohr
