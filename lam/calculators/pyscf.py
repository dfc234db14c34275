"""An ASE calculator around PySCF restricted/unrestricted Kohn–Sham DFT for molecules (non-periodic).

Stored forces are the exact derivative of the stored energy: the DFT grid response is included in the gradient
and the SCF is converged tightly. Energies in eV, forces in eV/Å.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.units import Bohr, Hartree


def build_mol(numbers: np.ndarray, positions: np.ndarray, basis: str = "def2-svp", charge: int = 0,
              spin: int | None = None, max_memory: int = 2000) -> Any:
    """A PySCF molecule from atomic numbers and Cartesian positions in Å (spin: 2S, default lowest)."""
    from pyscf import gto

    n_electrons = int(np.asarray(numbers).sum()) - charge
    return gto.M(
        atom=[(int(z), tuple(map(float, p))) for z, p in zip(numbers, positions)],
        unit="Angstrom", basis=basis, charge=charge, spin=n_electrons % 2 if spin is None else spin,
        verbose=0, max_memory=max_memory,
    )


def ks_energy_forces(numbers: np.ndarray, positions: np.ndarray, xc: str = "pbe", basis: str = "def2-svp",
                     charge: int = 0, spin: int | None = None, conv_tol: float = 1e-10, grid_level: int = 3,
                     grid_response: bool = True, max_memory: int = 2000) -> tuple[float, np.ndarray, float]:
    """Kohn–Sham energy (eV), forces (eV/Å) and energy (Hartree); RKS for closed shells, UKS otherwise.

    With ``grid_response`` the forces are the exact derivative of the energy (the DFT grid moves with the atoms).
    """
    from pyscf import dft

    mol = build_mol(numbers, positions, basis, charge, spin, max_memory)
    mf = dft.RKS(mol) if mol.spin == 0 else dft.UKS(mol)
    mf.xc = xc
    mf.conv_tol = conv_tol
    mf.grids.level = grid_level
    e_hartree = float(mf.kernel())
    if not mf.converged:
        raise RuntimeError(f"PySCF SCF did not converge ({xc}/{basis}, numbers={np.asarray(numbers).tolist()})")
    grad = mf.nuc_grad_method()
    grad.grid_response = grid_response
    forces = -np.asarray(grad.kernel()) * Hartree / Bohr
    return e_hartree * Hartree, forces, e_hartree


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
        if self.atoms.pbc.any():
            raise ValueError("PySCFCalculator handles molecules only (pbc must be False)")
        energy, forces, _ = ks_energy_forces(
            self.atoms.numbers, self.atoms.positions, self.xc, self.basis, self.charge, self.spin, self.conv_tol,
            self.grid_level, self.grid_response, self.max_memory)
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["forces"] = forces
