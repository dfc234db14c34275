"""The concurrent-learning loop's building blocks: executors, content-hashed state, selection, labelling."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from lam.data.frame import Frame
from lam.distill.executors import make_executor
from lam.distill.label import CalculatorSpec, LabellingFailed, check_success, label_chunk
from lam.distill.select import max_force_deviation, select_by_deviation
from lam.distill.state import IterationRecord, LoopState, TaskStore, content_hash


def _copper_frames(n: int, seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    frames = []
    for _ in range(n):
        pos = atoms.positions + rng.normal(scale=0.05, size=atoms.positions.shape)
        frames.append(Frame(numbers=atoms.numbers, positions=pos, cell=atoms.cell.array, pbc=[True] * 3))
    return frames


def test_label_chunk_matches_emt_directly() -> None:
    frames = _copper_frames(3)
    labelled, errors = label_chunk(frames, CalculatorSpec("ase.calculators.emt.EMT"))
    assert errors == ["", "", ""]
    for frame, out in zip(frames, labelled):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
        atoms.positions = frame.positions
        atoms.calc = EMT()
        assert out.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-12)
        np.testing.assert_allclose(out.forces, atoms.get_forces(), atol=1e-12)
        # EMT implements stress: the virial is W = -stress * V.
        np.testing.assert_allclose(out.virial, -atoms.get_stress(voigt=False) * atoms.get_volume(), atol=1e-10)


def test_label_failures_are_recorded_not_fatal() -> None:
    frames = _copper_frames(2)
    frames.append(Frame(numbers=[79, 200], positions=np.zeros((2, 3))))  # unknown element for EMT
    labelled, errors = label_chunk(frames, CalculatorSpec("ase.calculators.emt.EMT"))
    assert labelled[2] is None and errors[2]
    assert labelled[0] is not None and labelled[1] is not None
    with pytest.raises(LabellingFailed, match=r"only 2/3 frames"):
        check_success(2, 3, 0.8, iteration=1, errors=errors)
    check_success(2, 3, 0.5, iteration=1, errors=errors)


@pytest.mark.parametrize("kind", ["inline", "local", "submitit", "dask"])
def test_executors_give_identical_labels(kind: str, tmp_path) -> None:
    frames = _copper_frames(4, seed=3)
    spec = CalculatorSpec("ase.calculators.emt.EMT")
    # the same chunks as the executor gets, computed in this process
    reference = [fr for i in (0, 2) for fr in label_chunk(frames[i:i + 2], spec)[0]]
    options = {"cluster": "local", "timeout_min": 5} if kind == "submitit" else {}
    executor = make_executor(kind, max_workers=2, folder=tmp_path / "jobs", **options)
    try:
        futures = [executor.submit(label_chunk, frames[i:i + 2], spec) for i in (0, 2)]
        results = [f.result(timeout=300) for f in futures]
    finally:
        executor.shutdown()
    got = [fr for chunk, _ in results for fr in chunk]
    for a, b in zip(reference, got):
        assert a.energy == b.energy
        np.testing.assert_array_equal(a.forces, b.forces)


def test_unknown_executor_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown executor kind 'slurmish'"):
        make_executor("slurmish")


def test_content_hash_is_stable_and_sensitive() -> None:
    a = {"x": np.arange(3.0), "t": 300, "name": "md"}
    assert content_hash(a) == content_hash({"name": "md", "t": 300, "x": np.arange(3.0)})
    assert content_hash(a) != content_hash({**a, "t": 301})
    assert content_hash(a) != content_hash({**a, "x": np.arange(3.0) + 1e-12})


def test_task_store_round_trip_is_exact(tmp_path) -> None:
    frames, _ = label_chunk(_copper_frames(2), CalculatorSpec("ase.calculators.emt.EMT"))
    frames.append(Frame(numbers=[1, 8], positions=np.eye(3)[:2]))  # unlabelled, non-periodic
    store = TaskStore(tmp_path)
    key = content_hash({"k": 1})
    assert not store.has_frames("label", key)
    store.save_frames("label", key, frames, deviation=np.array([0.1, 0.2, 0.3]))
    back, extra = store.load_frames("label", key)
    np.testing.assert_array_equal(extra["deviation"], [0.1, 0.2, 0.3])
    for a, b in zip(frames, back):
        np.testing.assert_array_equal(a.positions, b.positions)
        assert a.energy == b.energy
        assert (a.forces is None) == (b.forces is None)
    assert not list(tmp_path.rglob("*.tmp"))


def test_loop_state_persists_and_refuses_other_config(tmp_path) -> None:
    state = LoopState(tmp_path, config_hash="a" * 64)
    rec = state.record(1)
    rec.n_explored, rec.n_accurate, rec.stage = 10, 7, "selected"
    state.save()
    again = LoopState(tmp_path, config_hash="a" * 64)
    assert isinstance(again.records[1], IterationRecord)
    assert again.records[1].accurate_ratio == pytest.approx(0.7)
    assert json.loads((tmp_path / "state.json").read_text())["records"][1]["stage"] == "selected"
    with pytest.raises(ValueError, match="another configuration"):
        LoopState(tmp_path, config_hash="b" * 64)


def test_model_deviation_and_trust_levels() -> None:
    forces = np.zeros((2, 3, 3))
    forces[1, 2] = [0.2, 0.0, 0.0]  # atom 2 differs by 0.2 between the two models → std 0.1
    assert max_force_deviation(forces) == pytest.approx(0.1)
    dev = np.array([0.01, 0.07, 0.12, 0.5, np.nan, 0.09, 0.06])
    sel = select_by_deviation(dev, lo=0.05, hi=0.15, max_candidates=2, strategy="largest")
    assert sel.accurate.tolist() == [0]
    assert sel.candidate.tolist() == [1, 2, 5, 6]
    assert sel.failed.tolist() == [3, 4]  # NaN is a failure, never accurate
    assert sel.selected.tolist() == [2, 5]
    r1 = select_by_deviation(dev, max_candidates=2, strategy="random", seed=7).selected
    r2 = select_by_deviation(dev, max_candidates=2, strategy="random", seed=7).selected
    assert r1.tolist() == r2.tolist() and len(r1) == 2
    assert sel.ratios()["accurate"] == pytest.approx(1 / 7)
