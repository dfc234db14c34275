"""AtomicGraph construction, label masks, conversions to/from ASE and PyG batching."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.stress import full_3x3_to_voigt_6_stress

from lam.data import keys as K
from lam.data.frame import Frame
from lam.data.graph import AtomicGraph, atoms_to_frame, collate, edge_vectors, frame_to_atoms
from lam.data.neighbors import neighbor_list


def emt_copper(n_rep: int = 2, seed: int = 0):
    """A rattled, strained fcc Cu cell labelled with EMT (energy, forces and stress are all non-trivial)."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=False).repeat((n_rep, n_rep, 1))
    rng = np.random.default_rng(seed)
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.03 * rng.standard_normal((3, 3))), scale_atoms=True)
    atoms.rattle(0.05, seed=seed)
    atoms.calc = EMT()
    atoms.get_potential_energy()
    atoms.get_forces()
    atoms.get_stress()
    return atoms


def test_from_frame_fields_and_masks() -> None:
    rng = np.random.default_rng(0)
    cell = np.array([[5.0, 0.0, 0.0], [1.0, 5.0, 0.0], [0.5, 0.3, 5.0]])
    positions = rng.uniform(0, 1, (7, 3)) @ cell
    virial = rng.standard_normal((3, 3))
    frame = Frame(numbers=[1, 8, 1, 6, 6, 8, 1], positions=positions, cell=cell, pbc=True, energy=-3.5, virial=virial)
    g = AtomicGraph.from_frame(frame, cutoff=3.0, head=2, weight=0.5, dtype=torch.float32)
    nl = neighbor_list(positions, cell, True, 3.0)

    assert g[K.POSITIONS].shape == (7, 3) and g[K.POSITIONS].dtype == torch.float32
    assert g[K.NUMBERS].dtype == torch.int64 and g[K.NUMBERS].tolist() == [1, 8, 1, 6, 6, 8, 1]
    assert g[K.CELL].shape == (1, 3, 3) and g[K.PBC].shape == (1, 3) and g[K.PBC].dtype == torch.bool
    assert g[K.EDGE_INDEX].dtype == torch.int64
    np.testing.assert_array_equal(g[K.EDGE_INDEX].numpy(), nl.edge_index)
    assert g[K.SHIFTS].dtype == torch.float32
    np.testing.assert_array_equal(g[K.SHIFTS].numpy(), nl.shifts)
    assert g[K.ENERGY].shape == (1,) and g[K.ENERGY].item() == -3.5
    np.testing.assert_allclose(g[K.VIRIAL][0].numpy(), virial, rtol=1e-6)
    # forces are missing: zeros, masked
    assert g[K.FORCES].shape == (7, 3) and not g[K.FORCES].any()
    assert g[K.HAS_ENERGY].tolist() == [True]
    assert g[K.HAS_FORCES].tolist() == [False]
    assert g[K.HAS_VIRIAL].tolist() == [True]
    assert g[K.HEAD].tolist() == [2] and g[K.HEAD].dtype == torch.int64
    assert g[K.WEIGHT].tolist() == [0.5]
    assert g.num_nodes == 7 and g.num_edges == nl.edge_index.shape[1]


def test_unlabelled_frame_has_all_masks_false() -> None:
    frame = Frame(numbers=[8, 1, 1], positions=molecule("H2O").positions)
    g = AtomicGraph.from_frame(frame, cutoff=2.0)
    assert not (g[K.HAS_ENERGY] | g[K.HAS_FORCES] | g[K.HAS_VIRIAL]).any()
    assert g[K.ENERGY].tolist() == [0.0] and not g[K.VIRIAL].any()
    assert g[K.EDGE_INDEX].shape == (2, 6)  # every pair of a water molecule within 2 Å
    assert not g[K.CELL].any() and not g[K.PBC].any()


def test_frame_graph_atoms_round_trip_with_emt_labels() -> None:
    atoms = emt_copper()
    ref_e, ref_f, ref_s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    frame = atoms_to_frame(atoms)
    # virial = -stress * V, in DeePMD's sign: for EMT the virial equals -dE/dstrain by finite difference
    np.testing.assert_allclose(frame.virial, -atoms.get_stress(voigt=False) * atoms.get_volume())

    graph = AtomicGraph.from_frame(frame, cutoff=4.0)
    back = graph.to_atoms()
    np.testing.assert_array_equal(back.numbers, atoms.numbers)
    np.testing.assert_allclose(back.positions, atoms.positions)
    np.testing.assert_allclose(back.cell.array, atoms.cell.array)
    assert back.pbc.tolist() == [True, True, True]
    assert back.get_potential_energy() == pytest.approx(ref_e, abs=1e-12)
    np.testing.assert_allclose(back.get_forces(), ref_f, atol=1e-12)
    np.testing.assert_allclose(back.get_stress(), ref_s, atol=1e-12)

    frame2 = graph.to_frame()
    assert frame2.energy == pytest.approx(frame.energy)
    np.testing.assert_allclose(frame2.virial, frame.virial)


def test_virial_sign_matches_strain_derivative() -> None:
    """W = -dE/d(strain): check against a finite difference of EMT energies under a symmetric strain."""
    atoms = emt_copper(seed=1)
    w = atoms_to_frame(atoms).virial
    eps, h = np.zeros((3, 3)), 1e-5
    eps[0, 1] = eps[1, 0] = 0.5
    eps[2, 2] = 1.0

    def energy(t: float) -> float:
        a = atoms.copy()
        a.calc = EMT()
        a.set_cell(atoms.cell.array @ (np.eye(3) + t * eps), scale_atoms=True)
        return a.get_potential_energy()

    de = (energy(h) - energy(-h)) / (2 * h)
    assert np.sum(w * eps) == pytest.approx(-de, rel=1e-5, abs=1e-7)


def test_stale_calculator_results_are_refused() -> None:
    atoms = emt_copper()
    atoms.positions[0] += 0.1
    with pytest.raises(ValueError, match="field 'energy'.*stale"):
        atoms_to_frame(atoms)
    atoms.info.update(e=-1.0, s=np.zeros(6))
    atoms.arrays["f"] = np.zeros((len(atoms), 3))
    assert atoms_to_frame(atoms, energy_key="e", forces_key="f", stress_key="s").energy == -1.0


def test_labels_from_named_info_and_array_keys() -> None:
    atoms = molecule("CH4")
    forces = np.arange(15, dtype=float).reshape(5, 3)
    atoms.info["dft_energy"] = -24.0
    atoms.arrays["dft_forces"] = forces
    g = AtomicGraph.from_atoms(atoms, cutoff=3.0, head=1, energy_key="dft_energy", forces_key="dft_forces")
    assert g[K.ENERGY].item() == -24.0 and g[K.HAS_ENERGY].item() and g[K.HAS_FORCES].item()
    np.testing.assert_array_equal(g[K.FORCES].numpy(), forces)
    assert not g[K.HAS_VIRIAL].item() and g[K.HEAD].item() == 1
    with pytest.raises(KeyError, match="'missing' not found in atoms.info"):
        AtomicGraph.from_atoms(atoms, cutoff=3.0, energy_key="missing")


def test_stress_in_voigt_and_3x3_give_the_same_virial() -> None:
    atoms = bulk("Al", "fcc", a=4.05)
    stress = np.array([[0.1, 0.02, -0.03], [0.02, -0.2, 0.04], [-0.03, 0.04, 0.05]])
    atoms.info["s6"] = full_3x3_to_voigt_6_stress(stress)
    atoms.info["s9"] = stress
    v6 = atoms_to_frame(atoms, stress_key="s6").virial
    v9 = atoms_to_frame(atoms, stress_key="s9").virial
    np.testing.assert_allclose(v6, -stress * atoms.get_volume())
    np.testing.assert_allclose(v9, v6)


def test_frame_to_atoms_without_labels_has_no_calculator() -> None:
    frame = Frame(numbers=[29], positions=np.zeros((1, 3)), cell=np.eye(3) * 2.5, pbc=True)
    atoms = frame_to_atoms(frame)
    assert atoms.calc is None and atoms.pbc.all()
    # a non-periodic frame with a virial cannot be represented as an ASE stress: it is dropped
    mol = Frame(numbers=[1, 1], positions=[[0, 0, 0], [0, 0, 0.74]], energy=-1.0, virial=np.eye(3))
    assert "stress" not in frame_to_atoms(mol).calc.results


def test_bad_frame_names_the_field() -> None:
    frame = Frame(numbers=[1, 1], positions=[[0, 0, 0], [0, 0, 0.74]], forces=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="water.h5: frame 4: field 'forces'"):
        AtomicGraph.from_frame(frame, cutoff=2.0, where="water.h5: frame 4")
    nan = Frame(numbers=[1, 1], positions=[[0, 0, 0], [0, 0, np.nan]])
    with pytest.raises(ValueError, match="field 'positions'"):
        AtomicGraph.from_frame(nan, cutoff=2.0)


def three_graphs() -> list[AtomicGraph]:
    water = Frame(numbers=[8, 1, 1], positions=molecule("H2O").positions, energy=-14.2)
    copper = atoms_to_frame(emt_copper())
    slab = Frame(
        numbers=[13] * 5,
        positions=np.random.default_rng(2).uniform(0, 4, (5, 3)),
        cell=np.diag([4.0, 4.0, 0.0]),
        pbc=[True, True, False],
        forces=np.ones((5, 3)),
    )
    return [
        AtomicGraph.from_frame(water, 3.0, head=0),
        AtomicGraph.from_frame(copper, 3.0, head=2, weight=2.0),
        AtomicGraph.from_frame(slab, 3.0, head=1),
    ]


def test_batching_three_graphs_of_different_sizes() -> None:
    graphs = three_graphs()
    batch = collate(graphs)
    n_atoms = [g.num_nodes for g in graphs]
    n_edges = [g.num_edges for g in graphs]
    assert batch.num_graphs == 3 and batch.num_nodes == sum(n_atoms)
    assert batch[K.PTR].tolist() == [0, n_atoms[0], n_atoms[0] + n_atoms[1], sum(n_atoms)]
    assert batch[K.BATCH].tolist() == sum(([k] * n for k, n in enumerate(n_atoms)), [])
    # edge_index offsets
    start = 0
    for k, g in enumerate(graphs):
        block = batch[K.EDGE_INDEX][:, start : start + n_edges[k]]
        assert torch.equal(block, g[K.EDGE_INDEX] + batch[K.PTR][k])
        start += n_edges[k]
    # per-graph fields stack along dim 0
    assert batch[K.CELL].shape == (3, 3, 3)
    assert torch.equal(batch[K.CELL][1], graphs[1][K.CELL][0])
    assert batch[K.PBC].tolist() == [[False] * 3, [True] * 3, [True, True, False]]
    assert batch[K.HEAD].tolist() == [0, 2, 1]
    assert batch[K.WEIGHT].tolist() == [1.0, 2.0, 1.0]
    assert batch[K.ENERGY].shape == (3,) and batch[K.VIRIAL].shape == (3, 3, 3)
    assert batch[K.HAS_ENERGY].tolist() == [True, True, False]
    assert batch[K.HAS_FORCES].tolist() == [False, True, True]
    assert batch[K.HAS_VIRIAL].tolist() == [False, True, False]
    assert batch[K.SHIFTS].shape == (sum(n_edges), 3) and batch[K.FORCES].shape == (sum(n_atoms), 3)
    # batches cross DataLoader worker processes by pickle
    restored = pickle.loads(pickle.dumps(batch))
    assert restored.num_graphs == 3 and torch.equal(restored[K.EDGE_INDEX], batch[K.EDGE_INDEX])
    # un-batching gives the graphs back
    again = batch.get_example(1)
    assert torch.equal(again[K.EDGE_INDEX], graphs[1][K.EDGE_INDEX])
    assert again.to_atoms().get_potential_energy() == pytest.approx(graphs[1][K.ENERGY].item())


def test_edge_vectors_reproduce_distances_in_a_batch() -> None:
    graphs = three_graphs()
    batch = collate(graphs)
    vec = edge_vectors(batch[K.POSITIONS], batch[K.EDGE_INDEX], batch[K.SHIFTS], batch[K.CELL], batch[K.BATCH])
    expected = np.concatenate(
        [
            neighbor_list(g[K.POSITIONS].numpy(), g[K.CELL][0].numpy(), g[K.PBC][0].numpy(), 3.0).distances
            for g in graphs
        ]
    )
    np.testing.assert_allclose(vec.norm(dim=1).numpy(), expected, atol=1e-12)
    assert batch[K.SHIFTS][batch[K.BATCH][batch[K.EDGE_INDEX][0]] == 1].abs().sum() > 0  # copper uses images


def test_edge_vectors_gradients_wrt_positions_and_cell() -> None:
    g = collate([AtomicGraph.from_frame(atoms_to_frame(emt_copper()), 3.0)])
    pos = g[K.POSITIONS].clone().requires_grad_(True)
    cell = g[K.CELL].clone().requires_grad_(True)
    vec = edge_vectors(pos, g[K.EDGE_INDEX], g[K.SHIFTS], cell, g[K.BATCH])
    i, j = g[K.EDGE_INDEX]
    # d(sum_e r_e . c) / d(cell) = sum_e shifts_e ⊗ c ; d/d(pos) is (in-degree - out-degree) c
    c = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    (vec @ c).sum().backward()
    expected_cell = (g[K.SHIFTS].sum(0)[:, None] * c[None, :]).unsqueeze(0)
    torch.testing.assert_close(cell.grad, expected_cell)
    degree = torch.bincount(j, minlength=pos.shape[0]) - torch.bincount(i, minlength=pos.shape[0])
    torch.testing.assert_close(pos.grad, degree[:, None].double() * c[None, :])
    # the batch-aware path and the single-cell path agree
    vec2 = edge_vectors(pos, g[K.EDGE_INDEX], g[K.SHIFTS], cell[0])
    torch.testing.assert_close(vec2, vec)
