"""``python -m lam.md`` and :func:`lam.md.run.run_md`: outputs, ensembles, force bookkeeping, clear errors."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.io import read

from lam import build_model
from lam.checkpoint import export_model
from lam.md.run import LOG_COLUMNS, init_velocities, load_structure, run_md
from lam.models import Potential

REPO = Path(__file__).resolve().parents[2]


def tiny(direct: bool = True) -> Potential:
    return build_model("student", type_map=["O", "H"], heads=["water"], dtype="float64", seed=3,
                       neurons=[4, 8], axis_neuron=4, sel=48, rcut=3.5, rcut_smth=0.5, fitting_neurons=[16],
                       direct_force={"rcut": 3.5, "hidden": 8, "num_basis": 4} if direct else False)


@pytest.fixture(scope="module")
def model() -> Potential:
    return tiny()


def test_cli_writes_csv_trajectory_and_drift(tmp_path: Path, water_dir: Path, model: Potential) -> None:
    export = export_model(model, tmp_path / "export")
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "lam.md", f"model={export}", "head=water", f"structure={water_dir / 'data_0'}",
         "index=2", "ensemble=mts", "dt=1.0", "n_inner=2", "steps=4", "log_every=2", f"output_dir={out}",
         "progress=false"],
        cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "meV/atom/ps" in proc.stdout and "mts (M=2" in proc.stdout
    with open(out / "md.csv") as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == LOG_COLUMNS
    assert [int(r[0]) for r in rows[1:]] == [0, 2, 4]
    assert [float(r[1]) for r in rows[1:]] == [0.0, 2.0, 4.0]
    etot = np.array([float(r[4]) for r in rows[1:]])
    parts = np.array([[float(r[2]), float(r[3])] for r in rows[1:]])
    np.testing.assert_allclose(etot, parts.sum(1), rtol=0, atol=1e-6)
    traj = read(out / "md.traj", index=":")
    assert len(traj) == 3 and len(traj[0]) == 192
    start = load_structure(water_dir / "data_0", index=2)
    np.testing.assert_allclose(traj[0].positions, start.positions, atol=1e-9)


def test_mts_force_calls_and_shared_passes(model: Potential, water_dir: Path) -> None:
    steps, m = 3, 4
    r = run_md(model, water_dir / "data_0", ensemble="mts", dt=2.0, n_inner=m, steps=steps, progress=False)
    assert r.force_calls == {"conservative": steps + 1, "direct": steps * m + 1}
    # the direct force at each outer step comes from the same model pass as the conservative one
    assert r.model_passes == steps * m + 1
    assert np.isclose(r.times_fs[-1], steps * 2.0) and r.n_inner == m


def test_nvt_conserved_energy_subtracts_thermostat_work(model: Potential, water_dir: Path) -> None:
    atoms = load_structure(water_dir / "data_0")
    init_velocities(atoms, 100.0, seed=0)
    r = run_md(model, atoms, ensemble="nvt", dt=0.5, steps=20, temperature=600.0, taut=5.0,
               keep_velocities=True, progress=False)
    assert r.temperature_k[-1] > r.temperature_k[0] + 100  # the thermostat heats strongly ...
    etot_rise = r.etot_ev[-1] - r.etot_ev[0]
    assert etot_rise > 1.0
    # ... and Etot - work stays flat: the integrator itself conserves energy
    assert abs(r.conserved_ev[-1] - r.conserved_ev[0]) < 1e-3 * etot_rise
    assert abs(r.drift_mev_atom_ps) < 0.1


def test_clear_errors(water_dir: Path, model: Potential) -> None:
    with pytest.raises(ValueError, match="direct-force head"):
        run_md(tiny(direct=False), water_dir / "data_0", ensemble="mts", steps=1, progress=False)
    with pytest.raises(ValueError, match="ensemble must be one of"):
        run_md(model, water_dir / "data_0", ensemble="npt", steps=1, progress=False)
    with pytest.raises(IndexError, match=r"data_0: frame 500 requested"):
        run_md(model, water_dir / "data_0", index=500, steps=1, progress=False)
    with pytest.raises(FileNotFoundError, match="nowhere.xyz"):
        run_md(model, "nowhere.xyz", steps=1, progress=False)


def test_hybrid_two_stages_direct_then_conservative(tmp_path: Path) -> None:
    """python -m lam.md.hybrid: stage 1 trains energy + direct forces, stage 2 -dE/dr from its export."""
    import json

    from lam.md.hybrid import run_hybrid

    out = run_hybrid(
        ["trainer.max_steps=2", "trainer.val_check_interval=2", "validate_before_training=false",
         "logger=none", "data.val_fraction=0.02", "data.batch_size=2", f"output_dir={tmp_path / 'stage1'}"],
        ["trainer.max_steps=2", "logger=none", "data.train=[tests/data/deepmd_water_64h2o/data_0]",
         "data.test=null", "data.test_fraction=0.03", "data.n_train=4", "finetune.eval_batch_size=1"])
    stage1 = json.loads((Path(out["stage1"]["export_dir"]) / "metadata.json").read_text())
    stage2 = json.loads((out["export_dir"] / "metadata.json").read_text())
    assert stage1["config"]["loss"]["forces"] is None and stage1["config"]["loss"]["direct_forces"]
    assert stage2["config"]["loss"]["direct_consistency"]
    assert stage2["config"]["loss"]["forces"] and stage2["config"]["model"]["source"] == str(
        Path(out["stage1"]["export_dir"]))
    assert out["export_dir"] == tmp_path / "stage2_conservative" / "export"
    assert stage2["model"]["direct_force"] is not None and stage2["heads"] == ["pbe"]
