"""Reusable physics tests for any :class:`lam.models.Potential`.

Subclass :class:`ModelPhysicsTests` in a test module and implement ``make_model(self, dtype)`` returning a
potential with at least two heads (random weights are fine; every check is a property of the functional
form)::

    class TestMyModel(ModelPhysicsTests):
        def make_model(self, dtype):
            return build_model("student", type_map=["H", "O"], heads=["a", "b"], dtype=dtype)

Checked: forces = -dE/dr against central finite differences (float64), virial against finite strain,
rotation / translation / permutation invariance and equivariance, supercell extensivity, continuity of
energy and forces at every cutoff in ``model.cutoffs``, batched = single evaluations, mixed-head batches =
per-head evaluations, float32 ~ float64, ``torch.compile`` gives the same numbers, an isolated atom gives
its element reference, and the forces of an isolated system sum to zero. Structures are small (5-8 atoms)
so a model's suite runs in seconds on one core.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ase import Atoms

from lam.data import keys as K
from lam.md.calculator import atoms_to_batch
from lam.models.potential import Potential

__all__ = ["ModelPhysicsTests", "evaluate", "random_cluster", "random_periodic", "random_rotation"]


def random_cluster(symbols: list[str], n_atoms: int, seed: int, box: float = 3.5, min_dist: float = 1.0
                   ) -> Atoms:
    """A non-periodic cluster of ``n_atoms`` (elements cycled from ``symbols``) with no pair closer than
    ``min_dist``."""
    rng = np.random.default_rng(seed)
    pos: list[np.ndarray] = []
    while len(pos) < n_atoms:
        p = rng.uniform(0.0, box, 3)
        if all(np.linalg.norm(p - q) >= min_dist for q in pos):
            pos.append(p)
    return Atoms([symbols[k % len(symbols)] for k in range(n_atoms)], positions=np.array(pos))


def random_periodic(symbols: list[str], n_atoms: int, seed: int, length: float = 4.2) -> Atoms:
    """A small triclinic periodic cell (smaller than typical cutoffs, so atoms see their own images)."""
    rng = np.random.default_rng(seed)
    cell = length * np.eye(3) + rng.uniform(-0.3, 0.3, (3, 3))
    atoms = random_cluster(symbols, n_atoms, seed, box=1.0, min_dist=0.0)
    while True:
        frac = rng.uniform(0.0, 1.0, (n_atoms, 3))
        atoms = Atoms(atoms.symbols, scaled_positions=frac, cell=cell, pbc=True)
        d = atoms.get_all_distances(mic=True)
        if d[np.triu_indices(n_atoms, 1)].min() > 1.0:
            return atoms


def random_rotation(seed: int) -> np.ndarray:
    """A random proper rotation matrix."""
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def evaluate(model: Potential, atoms_list: list[Atoms], head: int | list[int] = 0, virial: bool = True,
             forces: bool = True) -> dict[str, np.ndarray]:
    """Evaluate structures in one batch; float64 numpy results."""
    batch = atoms_to_batch(atoms_list, model.rcut, head=head, dtype=model.dtype)
    out = model(batch, compute_forces=forces, compute_virial=virial)
    return {k: v.detach().double().numpy() for k, v in out.items()}


def _energy(model: Potential, atoms: Atoms, head: int = 0) -> float:
    return float(evaluate(model, [atoms], head, virial=False, forces=False)[K.ENERGY][0])


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    """Max abs difference relative to the size of ``b``."""
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


class ModelPhysicsTests:
    """Physics test mixin; subclasses implement :meth:`make_model`."""

    fd_step: float = 1e-4
    fd_rtol: float = 1e-6
    compiled_rtol: float = 1e-10  # compiled vs eager; larger when eager runs a tabulated approximation
    n_atoms: int = 6

    def make_model(self, dtype: torch.dtype) -> Potential:
        """Return a potential (random weights fine, >= 2 heads) in ``dtype``."""
        raise NotImplementedError

    # ---------------------------------------------------------------- fixtures
    @pytest.fixture(scope="class")
    @classmethod
    def model64(cls) -> Potential:
        torch.manual_seed(0)
        model = cls.make_model(cls, torch.float64).eval()
        assert len(model.head_names) >= 2, "make_model must return a model with at least two heads"
        # distinct, non-zero element references so that reference handling is visible
        for h, name in enumerate(model.head_names):
            model.set_element_energies(name, {s: -1.5 * (k + 1) - 0.25 * h for k, s in enumerate(model.type_map)})
        return model

    @pytest.fixture(scope="class")
    @classmethod
    def symbols(cls, model64: Potential) -> list[str]:
        return list(model64.type_map)

    @pytest.fixture(scope="class")
    @classmethod
    def cluster(cls, symbols: list[str]) -> Atoms:
        return random_cluster(symbols, cls.n_atoms, seed=1)

    @pytest.fixture(scope="class")
    @classmethod
    def periodic(cls, symbols: list[str]) -> Atoms:
        return random_periodic(symbols, cls.n_atoms, seed=2)

    # ---------------------------------------------------------------- derivatives
    @pytest.mark.parametrize("kind", ["cluster", "periodic"])
    def test_forces_match_finite_differences(self, model64: Potential, kind: str, request) -> None:
        atoms = request.getfixturevalue(kind).copy()
        forces = evaluate(model64, [atoms], virial=False)[K.FORCES]
        fd = np.zeros_like(forces)
        pos0 = atoms.positions.copy()
        for a in range(len(atoms)):
            for c in range(3):
                for sign in (1, -1):
                    atoms.positions = pos0
                    atoms.positions[a, c] += sign * self.fd_step
                    fd[a, c] -= sign * _energy(model64, atoms) / (2 * self.fd_step)
        assert np.abs(forces).max() > 0, "forces vanish: the check would be vacuous"
        assert _rel(forces, fd) < self.fd_rtol

    @pytest.mark.parametrize("kind", ["cluster", "periodic"])
    def test_virial_matches_finite_strain(self, model64: Potential, kind: str, request) -> None:
        atoms = request.getfixturevalue(kind)
        virial = evaluate(model64, [atoms])[K.VIRIAL][0]
        fd = np.zeros((3, 3))
        for a in range(3):
            for b in range(3):
                for sign in (1, -1):
                    eps = np.eye(3)
                    eps[a, b] += sign * self.fd_step
                    strained = atoms.copy()
                    strained.positions = atoms.positions @ eps
                    strained.cell = atoms.cell.array @ eps
                    fd[a, b] -= sign * _energy(model64, strained) / (2 * self.fd_step)
        assert _rel(virial, fd) < self.fd_rtol
        assert np.allclose(virial, virial.T, atol=1e-9 * np.abs(virial).max())

    def test_stress_is_minus_virial_over_volume(self, model64: Potential, periodic: Atoms, cluster: Atoms
                                                ) -> None:
        out = evaluate(model64, [periodic, cluster])
        np.testing.assert_allclose(out[K.STRESS][0], -out[K.VIRIAL][0] / periodic.get_volume(), rtol=1e-12)
        assert np.all(out[K.STRESS][1] == 0.0)

    # ---------------------------------------------------------------- symmetries
    @pytest.mark.parametrize("kind", ["cluster", "periodic"])
    def test_rotation(self, model64: Potential, kind: str, request) -> None:
        atoms = request.getfixturevalue(kind)
        rot = random_rotation(3)
        rotated = atoms.copy()
        rotated.positions = atoms.positions @ rot.T
        if atoms.pbc.any():
            rotated.cell = atoms.cell.array @ rot.T
        ref, out = evaluate(model64, [atoms]), evaluate(model64, [rotated])
        np.testing.assert_allclose(out[K.ENERGY], ref[K.ENERGY], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(out[K.FORCES], ref[K.FORCES] @ rot.T, atol=1e-10 * np.abs(ref[K.FORCES]).max())
        np.testing.assert_allclose(out[K.VIRIAL][0], rot @ ref[K.VIRIAL][0] @ rot.T,
                                   atol=1e-10 * np.abs(ref[K.VIRIAL]).max())

    @pytest.mark.parametrize("kind", ["cluster", "periodic"])
    def test_translation(self, model64: Potential, kind: str, request) -> None:
        atoms = request.getfixturevalue(kind)
        moved = atoms.copy()
        moved.positions += np.array([0.7, -1.3, 2.9])
        ref, out = evaluate(model64, [atoms]), evaluate(model64, [moved])
        np.testing.assert_allclose(out[K.ENERGY], ref[K.ENERGY], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(out[K.FORCES], ref[K.FORCES], atol=1e-10 * np.abs(ref[K.FORCES]).max())
        np.testing.assert_allclose(ref[K.FORCES].sum(0), 0.0, atol=1e-10 * np.abs(ref[K.FORCES]).max())

    @pytest.mark.parametrize("kind", ["cluster", "periodic"])
    def test_permutation(self, model64: Potential, kind: str, request) -> None:
        atoms = request.getfixturevalue(kind)
        perm = np.random.default_rng(4).permutation(len(atoms))
        ref, out = evaluate(model64, [atoms]), evaluate(model64, [atoms[perm]])
        np.testing.assert_allclose(out[K.ENERGY], ref[K.ENERGY], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(out[K.ATOMIC_ENERGY], ref[K.ATOMIC_ENERGY][perm], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(out[K.FORCES], ref[K.FORCES][perm], atol=1e-10 * np.abs(ref[K.FORCES]).max())

    def test_supercell_is_extensive(self, model64: Potential, periodic: Atoms) -> None:
        ref = evaluate(model64, [periodic])
        for rep in [(2, 1, 1), (1, 2, 2)]:
            n = int(np.prod(rep))
            out = evaluate(model64, [periodic.repeat(rep)])
            np.testing.assert_allclose(out[K.ENERGY], n * ref[K.ENERGY], rtol=1e-11)
            np.testing.assert_allclose(out[K.FORCES], np.tile(ref[K.FORCES], (n, 1)),
                                       atol=1e-10 * np.abs(ref[K.FORCES]).max())
            np.testing.assert_allclose(out[K.VIRIAL], n * ref[K.VIRIAL], rtol=1e-9,
                                       atol=1e-10 * np.abs(ref[K.VIRIAL]).max())

    def test_smooth_at_every_cutoff(self, model64: Potential, symbols: list[str]) -> None:
        cutoffs = model64.cutoffs
        assert cutoffs, "the model must expose its cutoffs"
        direction = np.array([0.6, 0.48, 0.64])  # unit vector
        delta = 1e-6
        for rc in cutoffs:
            for n_fixed in (1, 2):  # dimer, and a trimer whose third atom adds angular terms
                fixed = [[0.0, 0.0, 0.0], [0.0, 1.1, 0.0]][:n_fixed]
                names = [symbols[0], symbols[-1], symbols[0]][: n_fixed + 1]

                def at(d: float, fixed: list = fixed, names: list = names) -> Atoms:
                    return Atoms(names, positions=[*fixed, (d * direction).tolist()])

                inside, outside = evaluate(model64, [at(rc - delta)]), evaluate(model64, [at(rc + delta)])
                far_inside = evaluate(model64, [at(rc - 0.4)])
                scale_e = abs(far_inside[K.ENERGY][0] - outside[K.ENERGY][0])
                assert scale_e > 0, f"energy does not depend on the neighbour inside {rc} Å: vacuous"
                # an inner cutoff need not be flat (outer blocks still see the atom): remove the slope
                f_mid = 0.5 * (inside[K.FORCES][-1] + outside[K.FORCES][-1])
                jump = outside[K.ENERGY][0] - inside[K.ENERGY][0] + 2 * delta * float(f_mid @ direction)
                assert abs(jump) < 1e-6 * scale_e + 1e-12, f"energy jumps by {jump:.3e} eV at {rc} Å"
                scale_f = np.abs(far_inside[K.FORCES]).max()
                jump_f = np.abs(inside[K.FORCES] - outside[K.FORCES]).max()
                assert jump_f < 1e-4 * scale_f + 1e-12, f"forces jump by {jump_f:.3e} eV/Å at {rc} Å"

    # ---------------------------------------------------------------- batching and heads
    def test_batched_equals_single(self, model64: Potential, cluster: Atoms, periodic: Atoms,
                                   symbols: list[str]) -> None:
        systems = [cluster, periodic, random_cluster(symbols, 5, seed=7)]
        out = evaluate(model64, systems)
        start = 0
        for g, atoms in enumerate(systems):
            single = evaluate(model64, [atoms])
            sl = slice(start, start + len(atoms))
            start += len(atoms)
            np.testing.assert_allclose(out[K.ENERGY][g], single[K.ENERGY][0], rtol=1e-12)
            np.testing.assert_allclose(out[K.FORCES][sl], single[K.FORCES], rtol=1e-9, atol=1e-13)
            np.testing.assert_allclose(out[K.VIRIAL][g], single[K.VIRIAL][0], rtol=1e-9, atol=1e-13)

    def test_mixed_heads_equal_single_head(self, model64: Potential, cluster: Atoms, periodic: Atoms) -> None:
        systems = [cluster, periodic, cluster, periodic]
        heads = [0, 1, 1, 0]
        out = evaluate(model64, systems, head=heads)
        start = 0
        for g, (atoms, h) in enumerate(zip(systems, heads)):
            single = evaluate(model64, [atoms], head=h)
            sl = slice(start, start + len(atoms))
            start += len(atoms)
            np.testing.assert_allclose(out[K.ENERGY][g], single[K.ENERGY][0], rtol=1e-12)
            np.testing.assert_allclose(out[K.FORCES][sl], single[K.FORCES], rtol=1e-9, atol=1e-13)
        assert not np.isclose(out[K.ENERGY][0], out[K.ENERGY][2]), "heads are identical: vacuous"

    def test_float32_agrees_with_float64(self, model64: Potential, cluster: Atoms, periodic: Atoms) -> None:
        model32 = copy.deepcopy(model64).float()
        ref, out = evaluate(model64, [cluster, periodic]), evaluate(model32, [cluster, periodic])
        np.testing.assert_allclose(out[K.ENERGY], ref[K.ENERGY], rtol=1e-5)
        assert _rel(out[K.FORCES], ref[K.FORCES]) < 1e-3
        assert _rel(out[K.VIRIAL], ref[K.VIRIAL]) < 1e-3

    def test_compiled_gives_same_numbers(self, model64: Potential, cluster: Atoms, periodic: Atoms) -> None:
        compiled = copy.deepcopy(model64)
        compiled.compile_energy()
        for _ in range(2):  # second call reuses the compiled graph
            ref, out = evaluate(model64, [cluster, periodic]), evaluate(compiled, [cluster, periodic])
            np.testing.assert_allclose(out[K.ENERGY], ref[K.ENERGY], rtol=self.compiled_rtol * 1e-2)
            assert _rel(out[K.FORCES], ref[K.FORCES]) < self.compiled_rtol
            assert _rel(out[K.VIRIAL], ref[K.VIRIAL]) < self.compiled_rtol

    def test_isolated_atom_gives_element_reference(self, model64: Potential) -> None:
        for h, name in enumerate(model64.head_names):
            refs = model64.heads[name].element_energy.detach().numpy()
            for t, symbol in enumerate(model64.type_map):
                out = evaluate(model64, [Atoms(symbol, positions=[[0.3, -0.2, 1.0]])], head=h)
                assert out[K.ENERGY][0] == pytest.approx(refs[t], abs=1e-12)
                assert np.all(out[K.FORCES] == 0.0)
