"""Potential API: type map, head management, metadata round trip, training mode, PyG batches, direct forces."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase.build import molecule

from lam.data import keys as K
from lam.data.graph import AtomicGraph, collate
from lam.md.calculator import atoms_to_batch
from lam.models import FittingHead, Potential, build_from_metadata, build_model
from lam.models.descriptors.se_e2_a import SeE2A, padded_slots, smooth_switch
from lam.testing.model_tests import random_periodic, random_rotation

torch.set_num_threads(1)  # 2 threads on the shared 2-core CI machine are 15-30x slower

TYPE_MAP = ["H", "C", "O"]


@pytest.fixture()
def model() -> Potential:
    return build_model("student", type_map=TYPE_MAP, heads=["pbe", "wb97x"], dtype=torch.float64, seed=0)


def _batch(model: Potential, atoms_list, head=0):
    return atoms_to_batch(atoms_list, model.rcut, head=head, dtype=model.dtype)


def test_unknown_element_is_named(model: Potential) -> None:
    with pytest.raises(ValueError, match=r"\['N'\] not in the model's type map \['H', 'C', 'O'\]"):
        model(_batch(model, [molecule("CH3CN")]))


def test_several_heads_need_a_head_choice(model: Potential) -> None:
    batch = _batch(model, [molecule("CH4")])
    del batch[K.HEAD]
    with pytest.raises(ValueError, match="pass head="):
        model(batch)
    by_name = model(batch, head="wb97x")[K.ENERGY]
    by_index = model(_batch(model, [molecule("CH4")], head=1))[K.ENERGY]
    torch.testing.assert_close(by_name, by_index)
    with pytest.raises(ValueError, match="head index out of range"):
        model(_batch(model, [molecule("CH4")], head=2))


def test_head_management(model: Potential) -> None:
    batch = _batch(model, [molecule("CH3OH")])
    e_pbe = model(batch, head="pbe")[K.ENERGY]
    model.add_head("rpbe", init_from="pbe")
    assert model.head_names == ["pbe", "wb97x", "rpbe"]
    torch.testing.assert_close(model(batch, head="rpbe")[K.ENERGY], e_pbe)
    model.add_head("fresh")
    assert not torch.allclose(model(batch, head="fresh")[K.ENERGY], e_pbe)
    with pytest.raises(ValueError, match="already exists"):
        model.add_head("pbe")
    model.rename_head("rpbe", "rpbe_d3")
    assert model.head_names == ["pbe", "wb97x", "rpbe_d3", "fresh"]
    torch.testing.assert_close(model(batch, head=2)[K.ENERGY], e_pbe)
    model.remove_head("fresh")
    assert model.head_names == ["pbe", "wb97x", "rpbe_d3"]
    with pytest.raises(KeyError, match="no head named 'fresh'"):
        model.remove_head("fresh")
    with pytest.raises(ValueError, match="not in the type map"):
        model.set_element_energies("pbe", {"N": -1.0})


def test_freeze_descriptor(model: Potential) -> None:
    model.freeze_descriptor(True)
    assert not any(p.requires_grad for p in model.descriptor.parameters())
    assert all(p.requires_grad for p in model.heads.parameters())
    model.freeze_descriptor(False)
    assert all(p.requires_grad for p in model.descriptor.parameters())


def test_metadata_rebuilds_the_model(model: Potential) -> None:
    model.add_head("wide", head=FittingHead(model.descriptor.dim_out, [32, 32], ntypes=3, activation="silu"))
    model.set_element_energies("pbe", {"H": -13.6, "O": -432.0})
    meta = model.metadata
    assert meta["preset"] == "student" and meta["type_map"] == TYPE_MAP and meta["seed"] == 0
    assert meta["heads"] == ["pbe", "wb97x", "wide"] and meta["dtype"] == "float64"
    assert meta["lam_version"] and meta["descriptor_config"]["rcut"] == 5.0
    rebuilt = build_from_metadata(meta)
    assert rebuilt.head_names == model.head_names and rebuilt.dtype == torch.float64
    rebuilt.load_state_dict(model.state_dict())  # strict: every shape matches
    batch = _batch(model, [molecule("CH3OH"), molecule("H2O")], head=[0, 2])
    torch.testing.assert_close(rebuilt(batch)[K.ENERGY], model(batch)[K.ENERGY])


def test_seed_fixes_initial_weights() -> None:
    a = build_model("student", type_map=TYPE_MAP, seed=7)
    b = build_model("student", type_map=TYPE_MAP, seed=7)
    c = build_model("student", type_map=TYPE_MAP, seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))
    assert a.dtype == torch.float32
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        build_model("huge", type_map=TYPE_MAP)


def test_training_mode_builds_a_graph_for_force_losses(model: Potential) -> None:
    model.train()
    out = model(_batch(model, [molecule("CH3OH")]), compute_virial=True)
    loss = (out[K.FORCES] ** 2).sum() + (out[K.VIRIAL] ** 2).sum()
    loss.backward()
    grads = [p.grad for p in model.descriptor.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    model.eval()
    assert model(_batch(model, [molecule("CH3OH")]))[K.FORCES].grad_fn is None


def test_forces_under_no_grad(model: Potential) -> None:
    with torch.no_grad():
        out = model(_batch(model, [molecule("CH3OH")]))
    assert out[K.FORCES].abs().max() > 0


def test_pyg_batch_from_the_graph_module_matches(model: Potential) -> None:
    systems = [molecule("CH3OH"), random_periodic(TYPE_MAP, 6, seed=3)]
    graphs = [AtomicGraph.from_atoms(a, model.rcut, head=h) for a, h in zip(systems, [1, 0])]
    out_pyg = model(collate(graphs), compute_virial=True)
    out_dict = model(_batch(model, systems, head=[1, 0]), compute_virial=True)
    for key in (K.ENERGY, K.FORCES, K.VIRIAL, K.STRESS):
        torch.testing.assert_close(out_pyg[key], out_dict[key])


def test_float32_model_accepts_float64_inputs() -> None:
    model = build_model("student", type_map=TYPE_MAP, dtype="float32")
    out = model(atoms_to_batch([molecule("CH4")], model.rcut, dtype=torch.float64))
    assert out[K.ENERGY].dtype == torch.float32 and out[K.FORCES].dtype == torch.float32


def test_direct_force_head_is_equivariant() -> None:
    model = build_model("student", type_map=TYPE_MAP, dtype=torch.float64, direct_force={"hidden": 16})
    atoms = molecule("CH3CH2OH")
    rot = random_rotation(0)
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rot.T
    f = model(_batch(model, [atoms]), compute_forces=False, compute_direct=True)[K.DIRECT_FORCES]
    f_rot = model(_batch(model, [rotated]), compute_forces=False, compute_direct=True)[K.DIRECT_FORCES]
    assert f.shape == (9, 3) and f.abs().max() > 0
    torch.testing.assert_close(f_rot, f @ torch.as_tensor(rot.T))
    assert build_from_metadata(model.metadata).direct_force_head is not None
    plain = build_model("student", type_map=TYPE_MAP)
    with pytest.raises(ValueError, match="no direct_force_head"):
        plain(atoms_to_batch([atoms], plain.rcut), compute_direct=True)


@pytest.mark.parametrize("kind", ["edge", "pair"])
def test_direct_force_head_kinds_equivariance_cutoff_and_net_force(kind: str) -> None:
    model = build_model("student", type_map=TYPE_MAP, dtype=torch.float64,
                        direct_force={"hidden": 16, "kind": kind, "rcut": 4.0, "rcut_smth": 3.0})
    atoms = random_periodic(TYPE_MAP, 10, seed=7)
    rot = random_rotation(1)
    moved = atoms.copy()
    moved.set_cell(atoms.cell.array @ rot.T, scale_atoms=True)
    f = model(_batch(model, [atoms]), compute_forces=False, compute_direct=True)[K.DIRECT_FORCES]
    f_rot = model(_batch(model, [moved]), compute_forces=False, compute_direct=True)[K.DIRECT_FORCES]
    torch.testing.assert_close(f_rot, f @ torch.as_tensor(rot.T))
    net = f.sum(0).abs().max()
    if kind == "edge":  # F_i = sum_j e_ij - sum_k e_ki: Newton's third law holds exactly
        assert net < 1e-12 * f.abs().max()
    else:
        assert net > 1e-6 * f.abs().max()
    # the head sees nothing beyond its cutoff: a far larger neighbour list gives the same forces
    far = atoms_to_batch([atoms], model.rcut + 2.0, dtype=model.dtype)
    torch.testing.assert_close(model(far, compute_forces=False, compute_direct=True)[K.DIRECT_FORCES], f)
    with pytest.raises(ValueError, match="kind"):
        build_model("student", type_map=TYPE_MAP, direct_force={"kind": "curl"})


def test_models_saved_with_the_pair_direct_head_still_load(tmp_path) -> None:
    """Metadata written before ``kind`` existed (no "kind" in the head config) rebuilds the pair readout."""
    from lam.checkpoint import export_model
    from lam.checkpoint import load as load_export

    model = build_model("student", type_map=TYPE_MAP, dtype=torch.float64,
                        direct_force={"hidden": 16, "kind": "pair"})
    export_model(model, tmp_path / "m")
    meta_path = tmp_path / "m" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    target = meta["model"]
    target["direct_force"].pop("kind")
    target["direct_force"].pop("vectors")
    target["direct_force"].pop("neighbour_norm")
    target["direct_force_kwargs"] = {"hidden": 16}
    meta_path.write_text(json.dumps(meta))
    loaded = load_export(tmp_path / "m")
    assert loaded.direct_force_head.kind == "pair"
    batch = _batch(model, [molecule("CH3CH2OH")])
    torch.testing.assert_close(loaded(batch, compute_direct=True)[K.DIRECT_FORCES],
                               model(batch, compute_direct=True)[K.DIRECT_FORCES])


def test_student_ignores_edges_beyond_its_cutoff(model: Potential) -> None:
    atoms = random_periodic(TYPE_MAP, 6, seed=4)
    near = atoms_to_batch([atoms], model.rcut, dtype=model.dtype)
    far = atoms_to_batch([atoms], model.rcut + 1.5, dtype=model.dtype)
    assert far[K.EDGE_INDEX].shape[1] > near[K.EDGE_INDEX].shape[1]
    torch.testing.assert_close(model(far)[K.FORCES], model(near)[K.FORCES])


def test_student_descriptor_building_blocks() -> None:
    r = torch.tensor([0.3, 0.5, 2.75, 5.0, 6.0], dtype=torch.float64)
    np.testing.assert_allclose(smooth_switch(r, 0.5, 5.0).numpy(), [1.0, 1.0, 0.5, 0.0, 0.0], atol=1e-15)
    slot, width = padded_slots(torch.tensor([0, 0, 0, 2, 2, 3]), 5)
    assert slot.tolist() == [0, 1, 2, 0, 1, 0] and width == 3
    desc = SeE2A(ntypes=2, neurons=[8, 16, 32], axis_neuron=4)
    assert desc.dim_out == 128 and desc.cutoffs == [5.0]
    out = desc(torch.tensor([0, 1]), torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, 3))
    assert out.shape == (2, 128) and torch.all(out == 0)
    with pytest.raises(ValueError, match="rcut_smth"):
        SeE2A(ntypes=1, rcut=3.0, rcut_smth=3.0)


def test_import_lam_is_light() -> None:
    code = ("import sys, lam; assert 'torch' not in sys.modules, 'torch'; f = lam.build_model; "
            "assert lam.LAMCalculator.__name__ == 'LAMCalculator'; "
            "bad = [m for m in ('lightning', 'pytorch_lightning', 'hydra') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
