"""``collate_frames`` (one shared neighbour search for small molecules) equals the per-frame ``collate`` path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from lam.data import keys as K
from lam.data.frame import Frame
from lam.data.graph import AtomicGraph, collate, collate_frames


def _mixed_frames() -> list[Frame]:
    """Molecules of several sizes (some far from the origin, one close to the cutoff in size), a periodic
    crystal, a slab, a single atom, a large molecule that takes the per-frame path, and missing labels."""
    rng = np.random.default_rng(3)
    frames: list[Frame] = []
    for k, name in enumerate(["H2O", "CH4", "NH3", "CO2", "C6H6", "CH3CH2OH", "H2", "O2"]):
        atoms = molecule(name)
        atoms.rattle(0.05, seed=k)
        forces = rng.standard_normal((len(atoms), 3)) if k % 2 == 0 else None
        frames.append(Frame(numbers=atoms.numbers, positions=atoms.positions + rng.uniform(-500, 500, 3),
                            cell=np.zeros((3, 3)), pbc=np.zeros(3, bool), energy=float(-k) if k % 3 else None,
                            forces=forces))
    frames.append(Frame(numbers=[8], positions=[[1.0, 2.0, 3.0]], cell=np.zeros((3, 3)), pbc=False, energy=-2.0))
    crystal = bulk("Cu", "fcc", a=3.6).repeat((2, 2, 2))
    crystal.rattle(0.05, seed=1)
    frames.append(Frame(numbers=crystal.numbers, positions=crystal.positions, cell=crystal.cell.array, pbc=True,
                        energy=-1.0, virial=rng.standard_normal((3, 3))))
    slab = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 1))
    slab.rattle(0.05, seed=2)
    frames.append(Frame(numbers=slab.numbers, positions=slab.positions, cell=slab.cell.array,
                        pbc=[True, True, False]))
    big = rng.uniform(0, 16, (300, 3))  # > 256 atoms: its own search
    frames.append(Frame(numbers=np.full(300, 6), positions=big, cell=np.zeros((3, 3)), pbc=False))
    # a molecule squeezed right behind another one in input coordinates: the grid must separate them
    frames.append(Frame(numbers=frames[0].numbers, positions=frames[0].positions + 0.3, cell=np.zeros((3, 3)),
                        pbc=False))
    return frames


def _assert_same_batch(a, b) -> None:
    assert sorted(a.keys()) == sorted(b.keys())
    for key in a.keys():
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key
    assert a.num_graphs == b.num_graphs
    assert a._slice_dict.keys() == b._slice_dict.keys()
    for key in a._slice_dict:
        assert torch.equal(a._slice_dict[key], b._slice_dict[key]), key
        assert torch.equal(torch.as_tensor(a._inc_dict[key]), torch.as_tensor(b._inc_dict[key])), key


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_collate_frames_equals_per_frame_collate(dtype: torch.dtype) -> None:
    frames = _mixed_frames()
    heads = [k % 3 for k in range(len(frames))]
    weights = [0.5 + k for k in range(len(frames))]
    expected = collate([AtomicGraph.from_frame(f, 5.0, head=h, weight=w, dtype=dtype)
                        for f, h, w in zip(frames, heads, weights)])
    got = collate_frames(frames, 5.0, head=heads, weight=weights, dtype=dtype)
    assert got[K.EDGE_INDEX].shape[1] > 1000  # the test has real edges to compare
    _assert_same_batch(expected, got)
    # graphs come back out of the batch like out of a collated one
    for g_exp, g_got in zip(expected.to_data_list(), got.to_data_list()):
        assert torch.equal(g_exp[K.EDGE_INDEX], g_got[K.EDGE_INDEX])
        assert g_exp.to_frame().energy == g_got.to_frame().energy


def test_collate_frames_many_small_molecules_scalar_head() -> None:
    rng = np.random.default_rng(0)
    base = molecule("CH3OH")
    frames = [Frame(numbers=base.numbers, positions=base.positions + 0.1 * rng.standard_normal((len(base), 3)),
                    cell=np.zeros((3, 3)), pbc=False) for _ in range(70)]  # 70 graphs: a 5x5x5 grid, not full
    expected = collate([AtomicGraph.from_frame(f, 6.0, head=1, dtype=torch.float32) for f in frames])
    _assert_same_batch(expected, collate_frames(frames, 6.0, head=1, dtype=torch.float32))


def test_collate_frames_errors_name_the_frame() -> None:
    good = Frame(numbers=[1, 1], positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.7]], cell=np.zeros((3, 3)), pbc=False)
    bad = Frame(numbers=[1, 1], positions=[[0.0, 0.0, 0.0], [0.0, np.nan, 0.7]], cell=np.zeros((3, 3)), pbc=False)
    with pytest.raises(ValueError, match="frame 1"):
        collate_frames([good, bad], 5.0)
    with pytest.raises(ValueError, match="at least one"):
        collate_frames([], 5.0)


def test_collate_frames_without_labels_equals_label_free_frames() -> None:
    frames = _mixed_frames()
    bare = [Frame(numbers=f.numbers, positions=f.positions, cell=f.cell, pbc=f.pbc) for f in frames]
    expected = collate([AtomicGraph.from_frame(f, 4.5, head=2, dtype=torch.float32) for f in bare])
    got = collate_frames(frames, 4.5, head=2, dtype=torch.float32, labels=False)
    assert bool(expected[K.HAS_FORCES].any()) is False and bool(collate_frames(frames, 4.5)[K.HAS_FORCES].any())
    _assert_same_batch(expected, got)
