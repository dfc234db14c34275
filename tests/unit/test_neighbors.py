"""Neighbour lists against ASE's reference implementation, on periodic, small, open and mixed cells."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.neighborlist import neighbor_list as ase_neighbor_list

from lam.data.neighbors import NeighborList, VerletList, _sorted_edges, neighbor_list, neighbor_lists


def random_triclinic_cell(rng: np.random.Generator, length: float) -> np.ndarray:
    """Rows of roughly ``length`` with sizeable off-diagonal tilts."""
    cell = np.diag(rng.uniform(0.8, 1.2, 3) * length)
    cell[1, 0], cell[2, 0], cell[2, 1] = rng.uniform(-0.4, 0.4, 3) * length
    return cell


def ase_reference(positions, cell, pbc, cutoff) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    atoms = Atoms(positions=positions, cell=cell, pbc=pbc)
    i, j, s, d = ase_neighbor_list("ijSd", atoms, cutoff)
    order = np.lexsort((s[:, 2], s[:, 1], s[:, 0], j, i))
    return i[order], j[order], s[order], d[order]


def assert_matches_ase(nl: NeighborList, positions, cell, pbc, cutoff) -> None:
    i, j, s, d = ase_reference(positions, cell, pbc, cutoff)
    assert len(i) > 0
    np.testing.assert_array_equal(nl.edge_index[0], i)
    np.testing.assert_array_equal(nl.edge_index[1], j)
    np.testing.assert_array_equal(nl.shifts, s)
    np.testing.assert_allclose(nl.distances, d, rtol=0, atol=1e-10)


def assert_well_formed(nl: NeighborList, positions, cell) -> None:
    e = nl.edge_index.shape[1]
    assert nl.edge_index.dtype == np.int64 and nl.edge_index.shape == (2, e)
    assert nl.shifts.dtype == np.int64 and nl.shifts.shape == (e, 3)
    assert nl.distances.dtype == np.float64 and nl.distances.shape == (e,)
    i, j = nl.edge_index
    # sorted by (i, j, shift), strictly: no duplicated edge
    order = np.lexsort((nl.shifts[:, 2], nl.shifts[:, 1], nl.shifts[:, 0], j, i))
    np.testing.assert_array_equal(order, np.arange(e))
    keys = np.column_stack([i, j, nl.shifts])
    assert len(np.unique(keys, axis=0)) == e
    # the documented convention reproduces the distances
    vec = positions[j] - positions[i] + nl.shifts @ np.asarray(cell, dtype=float).reshape(3, 3)
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), nl.distances, atol=1e-10)
    # no zero-shift self pair
    assert not np.any((i == j) & np.all(nl.shifts == 0, axis=1))


@pytest.mark.parametrize("seed", range(4))
def test_periodic_triclinic_matches_ase(seed: int) -> None:
    rng = np.random.default_rng(seed)
    cell = random_triclinic_cell(rng, 7.0)
    n = 40
    # fractional coordinates partly outside [0, 1): lists must not depend on wrapping
    positions = rng.uniform(-0.3, 1.3, (n, 3)) @ cell
    nl = neighbor_list(positions, cell, True, 4.5)
    assert_well_formed(nl, positions, cell)
    assert_matches_ase(nl, positions, cell, True, 4.5)


@pytest.mark.parametrize("seed", range(3))
def test_small_cell_needs_several_images(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    cell = random_triclinic_cell(rng, 2.2)
    positions = rng.uniform(0, 1, (3, 3)) @ cell
    cutoff = 5.0  # more than twice every cell height: images up to |shift| >= 2 are needed
    nl = neighbor_list(positions, cell, True, cutoff)
    assert_well_formed(nl, positions, cell)
    assert_matches_ase(nl, positions, cell, True, cutoff)
    assert np.abs(nl.shifts).max() >= 2
    self_images = nl.edge_index[0] == nl.edge_index[1]
    assert self_images.any(), "an atom must see its own periodic images in a cell smaller than the cutoff"


def test_single_atom_simple_cubic_coordination_shells() -> None:
    a = 2.0
    nl = neighbor_list(np.zeros((1, 3)), np.eye(3) * a, True, 2.1 * a)
    # simple cubic shells within 2.1 a: 6 (a), 12 (a√2), 8 (a√3), 6 (2a) -> 32 self images
    assert nl.edge_index.shape[1] == 32
    np.testing.assert_allclose(np.sort(nl.distances)[[0, 6, 18, 26]], a * np.array([1, 2**0.5, 3**0.5, 2]))
    np.testing.assert_array_equal(nl.edge_index, 0)


@pytest.mark.parametrize("cell", [np.zeros((3, 3)), np.diag([3.0, 4.0, 5.0])])
def test_non_periodic_matches_ase(cell: np.ndarray) -> None:
    rng = np.random.default_rng(7)
    positions = rng.uniform(-4, 8, (60, 3))
    nl = neighbor_list(positions, cell, False, 3.5)
    assert_well_formed(nl, positions, cell)
    assert_matches_ase(nl, positions, cell, False, 3.5)
    assert np.all(nl.shifts == 0)


@pytest.mark.parametrize(
    ("pbc", "cell"),
    [
        ([True, True, False], np.array([[4.0, 0, 0], [1.3, 3.7, 0], [0, 0, 0]])),  # slab, no third vector
        ([True, True, False], np.array([[4.0, 0, 0.6], [1.3, 3.7, -0.4], [0.5, 0.2, 3.0]])),  # tilted slab
        ([False, True, True], np.array([[5.0, 0, 0], [0.3, 3.5, 0], [0.4, -0.9, 3.2]])),
        ([True, False, False], np.array([[2.5, 0.3, 0], [0, 0, 0], [0, 0, 0]])),  # wire with a short period
    ],
)
def test_mixed_pbc_matches_ase(pbc, cell) -> None:
    rng = np.random.default_rng(11)
    positions = rng.uniform(0, 1, (30, 3)) @ np.where(np.array(pbc)[:, None], cell, np.eye(3) * 6.0)
    positions[:3] -= 7.0  # some atoms outside the cell, also along the open directions
    nl = neighbor_list(positions, cell, pbc, 4.0)
    assert_well_formed(nl, positions, cell)
    assert_matches_ase(nl, positions, cell, pbc, 4.0)
    assert np.all(nl.shifts[:, ~np.array(pbc)] == 0)
    assert np.any(nl.shifts[:, np.array(pbc)] != 0)


def _far_apart_cases() -> dict[str, tuple[np.ndarray, np.ndarray, object]]:
    rng = np.random.default_rng(21)
    near = rng.uniform(0, 3, (6, 3))
    return {
        # a pair of atoms far above a slab: vesin alone takes minutes or dies with SIGFPE here
        "slab": (np.r_[near, [[0, 0, 1e6], [1, 1, 1e6 + 2]]], np.diag([3.0, 3.0, 0.0]), [True, True, False]),
        "molecule": (np.r_[near, [[1e7, 0, 0], [1e7, 2, 0]]], np.zeros((3, 3)), False),
        "wire": (
            np.r_[near, [[0, 1e5, 1e5], [0, -3e4, 5]]],
            np.array([[2.5, 0.3, 0], [0, 0, 0], [0, 0, 0]]),
            [True, False, False],
        ),
        # periodic, but the images along c are out of reach of the cutoff (vacuum): treated as open
        "vacuum": (near, np.diag([3.0, 3.0, 1e4]), True),
        "tilted_vacuum": (near, np.array([[3.0, 0, 0], [1, 3, 0], [0.5, 0.5, 12.0]]), True),
    }


@pytest.mark.parametrize("name", sorted(_far_apart_cases()))
def test_far_apart_atoms_and_vacuum_match_ase(name: str) -> None:
    positions, cell, pbc = _far_apart_cases()[name]
    nl = neighbor_list(positions, cell, pbc, 6.0)
    assert_well_formed(nl, positions, cell)
    assert_matches_ase(nl, positions, cell, pbc, 6.0)
    far = np.arange(len(positions)) >= 6
    if far.any():  # the two far atoms see each other and nothing else
        pairs = nl.edge_index[:, far[nl.edge_index[0]]]
        assert set(pairs[1].tolist()) == set(np.flatnonzero(far).tolist())


def test_huge_vacuum_equals_open_direction() -> None:
    """A 10^6 Å periodic cell along c (vesin alone dies with SIGFPE) gives the slab's edges."""
    positions = np.random.default_rng(4).uniform(0, 3, (6, 3))
    periodic = neighbor_list(positions, np.diag([3.0, 3.0, 1e6]), True, 6.0)
    slab = neighbor_list(positions, np.diag([3.0, 3.0, 0.0]), [True, True, False], 6.0)
    assert_matches_ase(slab, positions, np.diag([3.0, 3.0, 0.0]), [True, True, False], 6.0)
    for a, b in zip(periodic, slab):
        np.testing.assert_array_equal(a, b)


def test_two_cutoffs_are_ordered_subsets() -> None:
    rng = np.random.default_rng(3)
    cell = random_triclinic_cell(rng, 8.0)
    positions = rng.uniform(0, 1, (50, 3)) @ cell
    big, small = neighbor_lists(positions, cell, True, [6.0, 4.0])
    assert_matches_ase(big, positions, cell, True, 6.0)
    assert_matches_ase(small, positions, cell, True, 4.0)
    keep = big.distances < 4.0
    np.testing.assert_array_equal(small.edge_index, big.edge_index[:, keep])
    np.testing.assert_array_equal(small.shifts, big.shifts[keep])
    assert small.edge_index.shape[1] < big.edge_index.shape[1]
    # order of the returned lists follows the order of the cutoffs
    small2, big2 = neighbor_lists(positions, cell, True, [4.0, 6.0])
    np.testing.assert_array_equal(small2.edge_index, small.edge_index)
    np.testing.assert_array_equal(big2.distances, big.distances)


def test_empty_and_isolated_systems() -> None:
    empty = neighbor_list(np.zeros((0, 3)), np.eye(3) * 5, True, 3.0)
    assert empty.edge_index.shape == (2, 0) and empty.shifts.shape == (0, 3) and empty.distances.shape == (0,)
    lone = neighbor_list(np.zeros((1, 3)), np.zeros((3, 3)), False, 3.0)
    assert lone.edge_index.shape == (2, 0)
    far = neighbor_list(np.array([[0.0, 0, 0], [10.0, 0, 0]]), np.zeros((3, 3)), False, 3.0)
    assert far.edge_index.shape == (2, 0)


def test_lexsort_fallback_gives_the_same_order() -> None:
    rng = np.random.default_rng(5)
    n_edges = 500
    i = rng.integers(0, 20, n_edges).astype(np.uint64)
    j = rng.integers(0, 20, n_edges).astype(np.uint64)
    s = rng.integers(-3, 4, (n_edges, 3)).astype(np.int32)
    d = rng.uniform(0, 5, n_edges)
    packed = _sorted_edges(i, j, s, d, n_atoms=20)
    fallback = _sorted_edges(i, j, s, d, n_atoms=2**31)  # too many atoms to pack keys into 64 bits
    order = np.lexsort((s[:, 2], s[:, 1], s[:, 0], j, i))
    expected = (np.stack([i[order], j[order]]).astype(np.int64), s[order].astype(np.int64), d[order])
    for a, b, ref in zip(packed, fallback, expected):
        assert a.dtype == ref.dtype and b.dtype == ref.dtype
        np.testing.assert_array_equal(a, ref)
        np.testing.assert_array_equal(b, ref)


@pytest.mark.parametrize(
    ("positions", "cell", "pbc", "match"),
    [
        (np.array([[0.0, 0.0, np.nan]]), np.eye(3), True, "non-finite"),
        (np.zeros((4, 2)), np.eye(3), True, r"shape \(N, 3\)"),
        (np.zeros((2, 3)), np.ones((3, 3)), True, "degenerate"),
        (np.zeros((2, 3)), np.diag([3.0, 0.0, 3.0]), [True, True, False], "degenerate"),  # zero periodic row
        (np.zeros((2, 3)), np.eye(3), [True, False], "pbc"),
        (np.zeros((2, 3)), np.eye(2), True, "cell"),
    ],
)
def test_bad_input_is_rejected(positions, cell, pbc, match) -> None:
    with pytest.raises(ValueError, match=match):
        neighbor_list(positions, cell, pbc, 3.0, where="bad.h5 frame 3")


def test_error_names_the_context_and_cutoffs_are_checked() -> None:
    with pytest.raises(ValueError, match="water.h5 frame 12: field 'positions'"):
        neighbor_list(np.full((2, 3), np.inf), np.eye(3), True, 3.0, where="water.h5 frame 12")
    for bad in ([], [0.0], [-1.0], [np.nan]):
        with pytest.raises(ValueError, match="cutoffs"):
            neighbor_lists(np.zeros((2, 3)), np.eye(3) * 4, True, bad)


@pytest.mark.parametrize("seed", range(3))
def test_verlet_list_equals_a_fresh_search_until_an_atom_moves_half_the_skin(seed: int) -> None:
    rng = np.random.default_rng(seed)
    cell = random_triclinic_cell(rng, 9.0)
    pos = rng.uniform(0, 1, (60, 3)) @ cell
    cutoff, skin = 3.5, 0.6
    verlet = VerletList(cutoff, skin=skin)
    for step in range(40):  # random walk: every atom moves up to 0.05 Å per step
        nl = verlet.update(pos, cell, True)
        fresh = neighbor_list(pos, cell, True, cutoff)
        np.testing.assert_array_equal(nl.edge_index, fresh.edge_index, err_msg=f"step {step}")
        np.testing.assert_array_equal(nl.shifts, fresh.shifts)
        np.testing.assert_allclose(nl.distances, fresh.distances, rtol=0, atol=1e-12)
        pos = pos + rng.normal(0, 0.03, pos.shape).clip(-0.05, 0.05)
    # searched again several times, but far from every step (0.3 Å allowed, 0.05 per step at most)
    assert 2 <= verlet.n_searches < 20 and verlet.n_calls == 40


def test_verlet_list_searches_again_on_a_big_move_a_new_cell_or_pbc() -> None:
    rng = np.random.default_rng(7)
    cell = np.diag([8.0, 8.5, 9.0])
    pos = rng.uniform(0, 1, (40, 3)) @ cell
    verlet = VerletList(3.0, skin=1.0)
    verlet.update(pos, cell, True)
    verlet.update(pos + 0.49, cell, True)  # |d| = 0.85 > 0.5: search
    assert verlet.n_searches == 2
    moved = pos + 0.49
    moved[3, 0] += 0.1
    verlet.update(moved, cell, True)  # atom 3 moved 0.1 since the last search
    assert verlet.n_searches == 2
    verlet.update(moved, cell * 1.001, True)
    verlet.update(moved, cell * 1.001, [True, True, False])
    verlet.update(moved[:-1], cell * 1.001, [True, True, False])
    assert verlet.n_searches == 5
    assert VerletList(3.0, skin=0.0).update(pos, cell, True).edge_index.shape == neighbor_list(
        pos, cell, True, 3.0).edge_index.shape
    with pytest.raises(ValueError, match="skin"):
        VerletList(3.0, skin=-0.1)
    with pytest.raises(ValueError, match="frame 4: field 'positions'"):
        verlet.update(np.full((2, 3), np.nan), cell, True, where="frame 4")
