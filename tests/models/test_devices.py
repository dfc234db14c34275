"""The same results on every torch device this machine has (CPU always; CUDA where a GPU is present).

Each test runs the CPU computation and the one on ``device`` and compares them in float64: the DPA-2 model's
energy, forces and virial, its frozen-feature direct forces, a few r-RESPA MD steps with frozen inner forces,
the in-memory training loop and the frozen-head fit. On a CPU-only machine ``device`` is ``cpu`` and the tests
check that passing a device through the API changes nothing; with a GPU they prove the CUDA path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from lam import build_model
from lam.data.formats import read_any
from lam.md.calculator import LAMCalculator, atoms_to_batch
from lam.md.hybrid import distill_frozen_head, quick_fit
from lam.md.run import load_structure, run_md
from lam.models import Potential

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def dpa2(device: str | torch.device = "cpu") -> Potential:
    """A small DPA-2 (both blocks, 2 repformer layers) with a ``kind="energy"`` direct head, float64."""
    model = build_model("small", type_map=["O", "H"], heads=["water"], dtype="float64", seed=0,
                        direct_force={"rcut": 3.5, "hidden": 16, "num_basis": 6, "kind": "energy", "vectors": 4})
    return model.to(device)


@pytest.fixture(scope="module")
def water(water_dir: Path) -> Atoms:
    return load_structure(water_dir / "data_0", index=0)


@pytest.mark.parametrize("device", DEVICES)
def test_potential_matches_cpu(device: str, water: Atoms) -> None:
    out = {}
    for where in ("cpu", device):
        model = dpa2(where)
        batch = atoms_to_batch([water], model.rcut, dtype=torch.float64, device=where)
        res = model(batch, compute_forces=True, compute_virial=True, compute_direct=True)
        assert res["energy"].device.type == torch.device(where).type
        out[where] = {k: res[k].detach().cpu().numpy() for k in ("energy", "forces", "virial", "direct_forces")}
    for key, ref in out["cpu"].items():
        np.testing.assert_allclose(out[device][key], ref, rtol=1e-9, atol=1e-9, err_msg=key)
    assert np.abs(out["cpu"]["forces"]).max() > 1e-5  # a force field, not zeros (untrained: small)


@pytest.mark.parametrize("device", DEVICES)
def test_frozen_mts_md_matches_cpu(device: str, water: Atoms) -> None:
    final = {}
    for where in ("cpu", device):
        calc = LAMCalculator(dpa2(where), head="water", compress=False)
        atoms = water.copy()
        calc.calculate(atoms, ["energy", "forces"])
        assert calc.features is not None and calc.features.device.type == torch.device(where).type
        frozen = calc.frozen_direct_forces(atoms)
        r = run_md(dpa2(), water, ensemble="mts", inner="frozen", dt=1.0, n_inner=4, steps=4, seed=1,
                   device=where, progress=False, refresh_every=2)
        assert r.force_calls["conservative"] == 5
        final[where] = (frozen, r.atoms.get_positions(), r.conserved_ev)
    for a, b in zip(final["cpu"], final[device]):
        np.testing.assert_allclose(b, a, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("device", DEVICES)
def test_training_loops_match_cpu(device: str, water_dir: Path) -> None:
    frames = list(read_any(water_dir / "data_1"))[:3]
    trajectory = [load_structure(water_dir / "data_2", index=k) for k in range(4)]
    results = {}
    for where in ("cpu", device):
        model = dpa2(where)
        losses = quick_fit(model, frames, steps=3, lr=1e-3)
        assert all(p.device.type == torch.device(where).type for p in model.parameters())
        gap = distill_frozen_head(model, trajectory, steps=3, lag=1)
        results[where] = (np.array(losses), np.array([gap["lag0"], gap["lag1"], gap["change"]]))
    for a, b in zip(results["cpu"], results[device]):
        assert np.all(np.isfinite(b))
        np.testing.assert_allclose(b, a, rtol=1e-6)
    assert results["cpu"][0][-1] != results["cpu"][0][0]  # the model trained
