"""Element-reference re-fit of lam.finetune.bias on real structures (CHO molecules, liquid water)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

import lam
from lam.data.formats.deepmd_npy import read_deepmd
from lam.data.frame import Frame
from lam.finetune.bias import element_counts, model_energies, refit_element_references

DATA = Path(__file__).resolve().parents[1] / "data"
TYPE_MAP = ["H", "C", "N", "O"]


def tiny_model(heads=("pbe",)) -> torch.nn.Module:
    return lam.build_model("small", type_map=TYPE_MAP, heads=list(heads), dtype=torch.float64, seed=1,
                           repformer_nlayers=1, g1_dim=8, g2_dim=8, repinit_neuron=[4, 16], fitting_neurons=[8],
                           repinit_sel=24, repformer_sel=16, three_body_sel=8)


def cho_frames(n_per_system: int = 4) -> list[Frame]:
    """Real CHO molecules of three compositions (C1H4O2, C3H3O4, C4H3O1)."""
    root = DATA / "deepmd_cho_combustion_nopbc"
    out = []
    for system in sorted(p for p in root.iterdir() if p.is_dir()):
        out.extend(itertools.islice(read_deepmd(system), n_per_system))
    return out


def relabel(model, frames, head, shift: dict[str, float]) -> list[Frame]:
    """Frames whose energy is the model's own prediction plus a known per-element shift."""
    e_model = model_energies(model, frames, head)
    counts = element_counts(frames, TYPE_MAP)
    delta = counts @ np.array([shift.get(s, 0.0) for s in TYPE_MAP])
    return [Frame(f.numbers, f.positions, f.cell, f.pbc, energy=float(e + d)) for f, e, d in
            zip(frames, e_model, delta)]


def test_refit_recovers_a_known_element_shift_exactly():
    model = tiny_model()
    model.set_element_energies("pbe", {"H": -13.6, "C": -1030.0, "N": -1480.0, "O": -2040.0})
    frames = cho_frames()
    shift = {"H": 0.731, "C": -2.25, "O": 4.5}
    labelled = relabel(model, frames, "pbe", shift)
    fit = refit_element_references(model, "pbe", labelled)
    new = model.heads["pbe"].element_energy.tolist()
    for symbol, old in zip(TYPE_MAP, (-13.6, -1030.0, -1480.0, -2040.0)):
        assert new[TYPE_MAP.index(symbol)] == pytest.approx(old + shift.get(symbol, 0.0), abs=1e-8)
    assert fit.absent == ["N"] and fit.degenerate == []
    assert fit.after["N"] == -1480.0  # absent from the data: the prior is kept
    assert fit.residual_rms_per_atom_before > 0.1 and fit.residual_rms_per_atom_after < 1e-9
    # the model now reproduces the shifted labels
    pred = model_energies(model, labelled, "pbe")
    assert np.allclose(pred, [f.energy for f in labelled], atol=1e-8, rtol=0)


def test_refit_uses_the_model_energy_not_the_raw_labels():
    """The fit is on the residual E_DFT − E_model_without_reference: a model-dependent part is not absorbed."""
    model = tiny_model()
    frames = cho_frames()
    labelled = relabel(model, frames, "pbe", {"H": 1.0, "C": 2.0, "O": 3.0})
    fit = refit_element_references(model, "pbe", labelled, apply=False)
    assert [fit.after[s] for s in ("H", "C", "O")] == pytest.approx([1.0, 2.0, 3.0], abs=1e-8)
    assert model.heads["pbe"].element_energy.abs().max() == 0  # apply=False leaves the model alone
    # a plain least-squares fit of the raw labels on counts (ignoring the network) would not give the shift
    counts = element_counts(labelled, TYPE_MAP)[:, [0, 1, 3]]
    naive = np.linalg.lstsq(counts, [f.energy for f in labelled], rcond=None)[0]
    assert not np.allclose(naive, [1.0, 2.0, 3.0], atol=1e-3)


def test_water_fixed_ratio_keeps_the_prior_along_the_undetermined_direction():
    model = tiny_model(heads=("pbe", "other"))
    prior = {"H": -13.6, "C": -1030.0, "N": -1480.0, "O": -2040.0}
    model.set_element_energies("pbe", prior)
    water = list(itertools.islice(read_deepmd(DATA / "deepmd_water_64h2o" / "data_0"), 3))
    labelled = relabel(model, water, "pbe", {"H": 0.5, "O": -1.0})  # 2·0.5 − 1 = 0 per H2O ...
    labelled = [Frame(f.numbers, f.positions, f.cell, f.pbc, energy=f.energy + 64 * 0.3) for f in labelled]
    fit = refit_element_references(model, "pbe", labelled)  # ... plus 0.3 eV per molecule
    assert len(fit.degenerate) == 1 and "H" in fit.degenerate[0] and "O" in fit.degenerate[0]
    d_h, d_o = fit.after["H"] - prior["H"], fit.after["O"] - prior["O"]
    assert 2 * d_h + d_o == pytest.approx(0.3, abs=1e-8)  # identified: the energy per molecule
    assert (d_h, d_o) == pytest.approx((0.12, 0.06), abs=1e-8)  # minimum-norm change: along (2, 1)
    assert fit.after["C"] == prior["C"] and fit.after["N"] == prior["N"]
    assert model.heads["other"].element_energy.abs().max() == 0  # other heads untouched
    pred = model_energies(model, labelled, "pbe")
    assert np.allclose(pred, [f.energy for f in labelled], atol=1e-7, rtol=0)


def test_refit_errors_name_the_problem():
    model = tiny_model()
    unlabelled = [Frame(f.numbers, f.positions) for f in cho_frames(1)]
    with pytest.raises(ValueError, match="no frame has an energy label"):
        refit_element_references(model, "pbe", unlabelled)
    with pytest.raises(ValueError, match="no head named 'rpbe'"):
        refit_element_references(model, "rpbe", cho_frames(1))
    ge = Frame([32, 52], [[0, 0, 0], [2.5, 0, 0]], energy=-1.0)
    with pytest.raises(ValueError, match=r"frame 0: element\(s\) \['Ge', 'Te'\]"):
        element_counts([ge], TYPE_MAP)
