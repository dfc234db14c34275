"""``python -m lam.eval``: metrics against hand-computed errors, a perfect-model check, JSON + PNG, bad options."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import lam
from lam.checkpoint import export_model
from lam.data.formats import write_extxyz
from lam.data.formats.deepmd_npy import read_deepmd
from lam.data.frame import Frame
from lam.data.graph import AtomicGraph, collate
from lam.eval import evaluate, main

ROOT = Path(__file__).resolve().parents[2]
WATER_VIRIAL = ROOT / "tests" / "data" / "deepmd_water_128h2o_virial"  # 384 atoms, energy/forces/virial
CHO = ROOT / "tests" / "data" / "deepmd_cho_combustion_nopbc" / "C1H4O2"


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = lam.build_model("small", type_map=["H", "C", "O"], heads=["pbe", "wb97x"], dtype=torch.float64, seed=2,
                            repformer_nlayers=1, g1_dim=8, g2_dim=8, repinit_neuron=[4, 16], fitting_neurons=[8],
                            repinit_sel=40, repformer_sel=16, three_body_sel=8, repinit_rcut=4.0,
                            repformer_rcut=3.0, repformer_rcut_smth=2.5, three_body_rcut=3.0,
                            three_body_rcut_smth=2.5)
    model.set_element_energies("pbe", {"H": -13.0, "C": -1030.0, "O": -2040.0})
    return export_model(model, tmp_path_factory.mktemp("eval") / "export")


def test_metrics_match_a_direct_computation_with_virials(export, tmp_path):
    model = lam.load(export)
    frames = list(itertools.islice(read_deepmd(WATER_VIRIAL), 3))
    result = evaluate(model, frames, head="pbe", batch_size=2)
    batch = collate([AtomicGraph.from_frame(f, model.rcut, head=0, dtype=torch.float64) for f in frames])
    out = model(batch, compute_forces=True, compute_virial=True, head="pbe")
    n = np.array([f.n_atoms for f in frames], dtype=float)
    e_err = (out["energy"].detach().numpy() - [f.energy for f in frames]) / n
    f_err = out["forces"].detach().numpy() - np.concatenate([f.forces for f in frames])
    v_err = (out["virial"].detach().numpy() - np.stack([f.virial for f in frames])) / n[:, None, None]
    m = result.metrics
    assert m["n_frames"] == 3 and m["n_atoms"] == 3 * 384
    assert m["energy_rmse_per_atom"] == pytest.approx(np.sqrt(np.mean(e_err**2)), rel=1e-9)
    assert m["energy_mae_per_atom"] == pytest.approx(np.mean(np.abs(e_err)), rel=1e-9)
    assert m["force_rmse"] == pytest.approx(np.sqrt(np.mean(f_err**2)), rel=1e-9)
    assert m["force_mae"] == pytest.approx(np.mean(np.abs(f_err)), rel=1e-9)
    assert m["virial_rmse_per_atom"] == pytest.approx(np.sqrt(np.mean(v_err**2)), rel=1e-9)
    assert result.forces[0].size == 3 * 384 * 3 and result.virial is not None and result.virial[0].size == 27


def test_cli_perfect_model_writes_json_and_png(export, tmp_path, capsys):
    """Data labelled by the model itself: every error is zero to rounding; the report files are written."""
    model = lam.load(export)
    frames = list(itertools.islice(read_deepmd(CHO), 6))
    batch = collate([AtomicGraph.from_frame(f, model.rcut, head=1, dtype=torch.float64) for f in frames])
    out = model(batch, compute_forces=True, head="wb97x")
    forces = out["forces"].detach().numpy()
    ptr = batch.ptr.numpy()
    labelled = [Frame(f.numbers, f.positions, energy=float(e), forces=forces[ptr[k]:ptr[k + 1]])
                for k, (f, e) in enumerate(zip(frames, out["energy"].detach().numpy()))]
    data = tmp_path / "self.extxyz"
    write_extxyz(data, labelled)
    code = main([f"model={export}", f"data={data}", "head=wb97x", f"output_dir={tmp_path / 'report'}",
                 "batch_size=4"])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "head wb97x: 6 frames" in stdout and "F RMSE" in stdout
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert report["head"] == "wb97x" and report["data"] == str(data) and report["model"] == str(export)
    m = report["metrics"]
    assert m["n_frames"] == 6 and "virial_rmse_per_atom" not in m
    assert m["energy_rmse_per_atom"] < 1e-7 and m["force_rmse"] < 1e-6  # extxyz keeps ~1e-8 relative precision
    png = (tmp_path / "report" / "parity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # the other head of the same model does not fit these labels
    code = main([f"model={export}", f"data={data}", "head=pbe", f"output_dir={tmp_path / 'pbe'}"])
    assert code == 0
    pbe = json.loads((tmp_path / "pbe" / "metrics.json").read_text())["metrics"]
    assert pbe["energy_rmse_per_atom"] > 1.0


def test_cli_bad_options_exit_2(export, tmp_path, capsys):
    assert main([f"model={export}", f"data={CHO}", "max_frames=2"]) == 2  # two heads, none chosen
    assert "choose one with head=<name>" in capsys.readouterr().err
    assert main([f"model={export}", f"data={CHO}", "head=rpbe"]) == 2
    assert "not a head of the model" in capsys.readouterr().err
    assert main([f"model={export}", f"data={CHO}", "hed=pbe"]) == 2
    assert "hed" in capsys.readouterr().err
    assert main([f"data={CHO}"]) == 2
    assert "missing required option(s) ['model']" in capsys.readouterr().err
    assert main([f"model={export}", f"data={tmp_path / 'nothing'}", "head=pbe"]) == 2
