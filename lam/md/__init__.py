"""Molecular dynamics: the ASE calculator (energy, forces, stress, committee deviation)."""

from lam.md.calculator import LAMCalculator, atoms_to_batch

__all__ = ["LAMCalculator", "atoms_to_batch"]
