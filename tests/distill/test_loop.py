"""The concurrent-learning loop end to end on copper with EMT reference labels: resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.io import write

from lam.distill.state import load_frames

RUNNER = """
import sys
from lam.distill.loop import DistillLoop
DistillLoop(
    teacher={"source": sys.argv[1]}, structures={"paths": [sys.argv[2]], "per_file": 1}, output_dir=sys.argv[3],
    student={"dtype": "float64", "overrides": {"neurons": [8, 16], "axis_neuron": 4, "fitting_neurons": [16, 16],
                                                "rcut": 4.5}},
    explore={"temperatures": [300, 900], "steps": 30, "sample_every": 5, "timestep_fs": 2.0},
    select={"lo": 1e-7, "hi": 50.0, "max_candidates": 6, "committee": "students", "n_committee": 2},
    label={"kind": "reference", "calculator": {"target": "ase.calculators.emt.EMT"}, "chunk_size": 2},
    train={"steps": 15, "batch_size": 4, "accelerator": "cpu"},
    converge={"max_iterations": 3, "accurate_ratio": 0.99},
    executor={"kind": "inline"}, report={"speed_frames": 2, "speed_repeats": 1},
).run()
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    import lam
    from lam.checkpoint import export_model

    root = tmp_path_factory.mktemp("distill")
    teacher = lam.build_model("student", type_map=["Cu"], heads=["emt"], dtype="float64", seed=3,
                              neurons=[8, 16], axis_neuron=4, fitting_neurons=[16, 16], rcut=4.5)
    export_model(teacher, root / "teacher")
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.02, seed=1)
    write(root / "cu.xyz", atoms)
    (root / "runner.py").write_text(RUNNER)
    return {"root": root, "teacher": root / "teacher", "structure": root / "cu.xyz", "runner": root / "runner.py"}


def _cmd(setup: dict[str, Path], out: Path) -> list[str]:
    return [sys.executable, str(setup["runner"]), str(setup["teacher"]), str(setup["structure"]), str(out)]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def _dataset(out: Path) -> list:
    frames = []
    for f in sorted(out.glob("iter_*/labelled.npz")):
        frames.extend(load_frames(f)[0])
    return frames


def _label_keys(out: Path) -> list[str]:
    log = out / "tasks.log"
    return [line.split()[1] for line in log.read_text().splitlines() if line.startswith("label ")]


def test_killed_loop_resumes_without_recomputing_and_matches(setup) -> None:
    ref_out = setup["root"] / "uninterrupted"
    subprocess.run(_cmd(setup, ref_out), check=True, env=_env(), capture_output=True, timeout=1800)

    out = setup["root"] / "killed"
    proc = subprocess.Popen(_cmd(setup, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 1200
    # kill as soon as iteration 1 has stored its first label chunk (committee predictions come before it)
    while time.monotonic() < deadline and proc.poll() is None:
        if _labelled_after_selection(out):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the loop finished before it could be killed; make the test run longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = _label_keys(out)
    assert done_before, "nothing was labelled before the kill"
    assert not (out / "report.json").exists()

    subprocess.run(_cmd(setup, out), check=True, env=_env(), capture_output=True, timeout=1800)
    keys = _label_keys(out)
    assert len(keys) == len(set(keys)), "a finished label task was computed again after the restart"
    assert set(done_before) <= set(keys)

    ref, got = _dataset(ref_out), _dataset(out)
    assert len(ref) == len(got) > 0
    for a, b in zip(ref, got):
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.energy == b.energy
        np.testing.assert_array_equal(a.forces, b.forces)
    report = json.loads((out / "report.json").read_text())
    ref_report = json.loads((ref_out / "report.json").read_text())
    assert [r["accurate"] for r in report["iterations"]] == [r["accurate"] for r in ref_report["iterations"]]
    import lam

    student = lam.load(out / "student")
    assert student.head_names == ["emt"]


def _labelled_after_selection(out: Path) -> bool:
    """True once a label task finished after a committee prediction, i.e. mid-labelling of iteration >= 1."""
    log = out / "tasks.log"
    if not log.exists():
        return False
    kinds = [line.split()[0] for line in log.read_text().splitlines()]
    return "predict" in kinds and "label" in kinds[kinds.index("predict"):]
