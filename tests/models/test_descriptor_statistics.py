"""Environment-matrix statistics from data (DeePMD-kit's normalisation step) for teacher and student."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ase import Atoms

import lam
from lam.checkpoint import export_model, load
from lam.data.demo import demo_path
from lam.data.formats.h5 import H5Reader
from lam.data.graph import AtomicGraph, collate
from lam.models.descriptors.se_e2_a import smooth_switch


def _graphs(model, n: int = 12):
    reader = H5Reader(demo_path("pbe"))
    return [AtomicGraph.from_frame(reader[i], model.rcut, dtype=model.dtype) for i in range(n)]


@pytest.mark.parametrize("preset", ["student", "small"])
def test_statistics_change_scales_and_survive_export(preset: str, tmp_path) -> None:
    kw = {"repformer_nlayers": 1} if preset == "small" else {}
    model = lam.build_model(preset, type_map=["H", "C", "N", "O"], heads=["pbe"], dtype="float64", seed=0, **kw)
    graphs = _graphs(model)
    batch = collate(graphs)
    before = model(batch)["energy"].detach().clone()
    assert model.fit_descriptor_statistics(graphs, heads=True)
    after = model(batch)["energy"].detach()
    # molecules have few neighbours compared with sel: the scales shrink, the inputs (and energies) change
    assert not torch.allclose(before, after)
    export_model(model, tmp_path / "m")
    again = load(tmp_path / "m")
    np.testing.assert_allclose(again(batch)["energy"].detach().numpy(), after.numpy(), rtol=1e-12, atol=1e-12)


def test_student_embedding_input_is_standardised_over_real_neighbours() -> None:
    model = lam.build_model("student", type_map=["H", "C", "N", "O"], heads=["pbe"], dtype="float64")
    graphs = _graphs(model, 4)
    model.fit_descriptor_statistics(graphs)
    desc = model.descriptor
    values = []
    for g in graphs:
        d = g.pos[g.edge_index[1]] - g.pos[g.edge_index[0]]
        r = d.norm(dim=-1)
        r = r[r < desc.rcut]
        values.append(smooth_switch(r, desc.rcut_smth, desc.rcut) / r)
    s = torch.cat(values)
    assert desc.env_std == pytest.approx(float(s.std(unbiased=False)), rel=1e-10)
    # the embedding sees (s / env_std - env_shift): zero mean, unit variance over the sampled neighbours
    u = s / desc.env_std - desc.env_shift
    assert float(u.mean()) == pytest.approx(0.0, abs=1e-10)
    assert float(u.std(unbiased=False)) == pytest.approx(1.0, rel=1e-10)


@pytest.mark.parametrize("preset", ["student", "small"])
def test_head_statistics_standardise_features_and_set_force_scale(preset: str) -> None:
    kw = {"repformer_nlayers": 1} if preset == "small" else {}
    model = lam.build_model(preset, type_map=["H", "C", "N", "O"], heads=["pbe"], dtype="float64", **kw)
    graphs = _graphs(model, 16)
    batch = collate(graphs)
    untrained = model(batch)["forces"].detach()
    data_rms = float(batch.forces.pow(2).mean().sqrt())
    assert model.fit_descriptor_statistics(graphs, heads=True)
    head = model.heads["pbe"]
    types = model.types_from_numbers(batch.numbers)
    with torch.no_grad():
        from lam.models.potential import edge_vectors

        vec = edge_vectors(batch.pos, batch.edge_index, batch.shifts, batch.cell.reshape(-1, 3, 3), batch.batch)
        feats = model.descriptor(types, batch.edge_index, vec)
    x = (feats - head.input_mean[types]) / head.input_std[types]
    # per-element means removed; one scale for all features, making their spread over all atoms one
    for t in types.unique():
        assert x[types == t].mean(0).abs().max() < 1e-8
    spread = (feats - feats.mean(0)) / head.input_std[types]
    assert float(spread.pow(2).mean().sqrt()) == pytest.approx(1.0, rel=1e-6)
    assert torch.all(head.input_std == head.input_std[0, 0])
    # the output scale makes fresh forces 0.3x as large as the data's (they were ~100x too small for the student)
    forces = model(batch)["forces"].detach()
    assert float(forces.pow(2).mean().sqrt()) == pytest.approx(0.3 * data_rms, rel=1e-6)
    if preset == "student":
        assert float(untrained.pow(2).mean().sqrt()) < 0.05 * data_rms


def test_isolated_atom_keeps_its_reference_after_statistics() -> None:
    model = lam.build_model("student", type_map=["H", "C", "N", "O"], heads=["pbe"], dtype="float64")
    model.set_element_energies("pbe", {"H": -13.6, "C": -1030.0, "N": -1480.0, "O": -2040.0})
    model.fit_descriptor_statistics(_graphs(model, 8), heads=True)
    assert float(model.heads["pbe"].scale) != 1.0
    for symbol, ref in {"H": -13.6, "O": -2040.0}.items():
        atom = AtomicGraph.from_atoms(Atoms(symbol, positions=[[0.0, 0.0, 0.0]]), model.rcut, dtype=torch.float64)
        out = model(collate([atom]))
        assert float(out["energy"][0]) == pytest.approx(ref, abs=1e-9)
        assert float(out["forces"].abs().max()) == 0.0


def test_statistics_per_head_follow_each_heads_data() -> None:
    model = lam.build_model("student", type_map=["H", "C", "N", "O"], heads=["a", "b"], dtype="float64")
    model.heads["b"].load_state_dict(model.heads["a"].state_dict())
    graphs = []
    for g in _graphs(model, 6):
        twin = copy.deepcopy(g)
        twin.head = torch.tensor([1])
        twin.forces = 3.0 * twin.forces  # head b: same structures, forces three times larger
        graphs += [g, twin]
    assert model.fit_output_statistics(graphs)
    a, b = model.heads["a"], model.heads["b"]
    assert float(b.scale) == pytest.approx(3.0 * float(a.scale), rel=1e-9)
    torch.testing.assert_close(a.input_mean, b.input_mean)


def test_weights_without_head_normalisation_load_as_identity() -> None:
    model = lam.build_model("student", type_map=["H", "C", "N", "O"], heads=["pbe"], dtype="float64")
    state = {k: v for k, v in model.state_dict().items() if "input_" not in k}
    model.fit_descriptor_statistics(_graphs(model, 4), heads=True)
    model.load_state_dict(state, strict=True)
    assert torch.equal(model.heads["pbe"].input_mean, torch.zeros_like(model.heads["pbe"].input_mean))
    assert torch.equal(model.heads["pbe"].input_std, torch.ones_like(model.heads["pbe"].input_std))


def test_compressed_student_matches_after_statistics() -> None:
    model = lam.build_model("student", type_map=["H", "C", "N", "O"], heads=["pbe"], dtype="float64")
    graphs = _graphs(model, 8)
    model.fit_descriptor_statistics(graphs, heads=True)
    model.eval()
    batch = collate(graphs)
    ref = model(batch)
    model.compress()
    out = model(batch)
    np.testing.assert_allclose(out["energy"].detach(), ref["energy"].detach(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(out["forces"].detach(), ref["forces"].detach(), rtol=0, atol=1e-3)
