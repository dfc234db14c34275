"""Models exported in every released format still load and give the same numbers (upgrade chain)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import molecule

import lam
from lam.md.calculator import atoms_to_batch

EXPORTS = Path(__file__).resolve().parents[1] / "data" / "exports"
REFERENCE = json.loads((EXPORTS / "reference.json").read_text())


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_released_export_loads_with_same_energy_and_forces(name: str) -> None:
    model = lam.load(EXPORTS / name)
    assert model.head_names == ["pbe", "wb97x"]
    assert model.export_metadata["format_version"] >= 1
    batch = atoms_to_batch([molecule("CH3OH")], model.rcut, head=0, dtype=torch.float64)
    out = model(batch, compute_forces=True)
    assert float(out["energy"][0]) == pytest.approx(REFERENCE[name]["energy"], abs=1e-9)
    np.testing.assert_allclose(out["forces"].detach().numpy(), REFERENCE[name]["forces"], atol=1e-9)


def test_future_format_is_refused_with_a_clear_error(tmp_path) -> None:
    import shutil

    from lam.checkpoint import CheckpointFormatError

    shutil.copytree(EXPORTS / "format1_student", tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "metadata.json").read_text())
    meta["format_version"] = 99
    (tmp_path / "m" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointFormatError, match="format_version 99 was written by a newer lam"):
        lam.load(tmp_path / "m")
