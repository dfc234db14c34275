"""Environment-matrix statistics from data (DeePMD-kit's normalisation step) for teacher and student."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lam
from lam.checkpoint import export_model, load
from lam.data.formats.h5 import H5Reader
from lam.data.demo import demo_path
from lam.data.graph import AtomicGraph, collate


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
    assert model.fit_descriptor_statistics(graphs)
    after = model(batch)["energy"].detach()
    # molecules have few neighbours compared with sel: the scales shrink, the inputs (and energies) change
    assert not torch.allclose(before, after)
    export_model(model, tmp_path / "m")
    again = load(tmp_path / "m")
    np.testing.assert_allclose(again(batch)["energy"].detach().numpy(), after.numpy(), rtol=1e-12, atol=1e-12)


def test_student_scale_is_rms_of_s_over_sel_slots() -> None:
    model = lam.build_model("student", type_map=["H", "C", "N", "O"], heads=["pbe"], dtype="float64")
    graphs = _graphs(model, 4)
    model.fit_descriptor_statistics(graphs)
    desc = model.descriptor
    total, n = 0.0, 0
    for g in graphs:
        d = g.pos[g.edge_index[1]] - g.pos[g.edge_index[0]]
        r = d.norm(dim=-1)
        r = r[r < desc.rcut]
        from lam.models.descriptors.se_e2_a import smooth_switch

        total += float((smooth_switch(r, desc.rcut_smth, desc.rcut) / r).pow(2).sum())
        n += g.num_nodes
    assert desc.env_std == pytest.approx(np.sqrt(total / (n * desc.sel)), rel=1e-10)
