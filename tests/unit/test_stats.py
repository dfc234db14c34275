"""Element references and dataset statistics (lam.data.stats)."""

from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest

from lam.data.formats.deepmd_npy import read_deepmd
from lam.data.formats.h5 import H5Reader, write_h5
from lam.data.frame import Frame
from lam.data.stats import (
    DegenerateReferenceWarning,
    ElementReferenceAccumulator,
    StatisticsError,
    compute_statistics,
)

DATA = Path(__file__).resolve().parents[1] / "data"
TRUE_REFS = {1: -13.6, 6: -1029.5, 7: -1485.3, 8: -2041.8, 16: -10830.0}  # eV, ANI-like magnitudes


def _random_molecules(n: int, seed: int = 0, noise: float = 0.0, with_forces: bool = True) -> list[Frame]:
    rng = np.random.default_rng(seed)
    zs = np.array(sorted(TRUE_REFS))
    frames = []
    for _ in range(n):
        n_at = int(rng.integers(3, 20))
        numbers = rng.choice(zs, size=n_at, p=[0.45, 0.3, 0.1, 0.1, 0.05])
        energy = sum(TRUE_REFS[int(z)] for z in numbers) + noise * rng.standard_normal()
        pos = rng.uniform(0, 8, size=(n_at, 3))
        forces = rng.normal(0, 0.7, size=(n_at, 3)) if with_forces else None
        frames.append(Frame(numbers=numbers, positions=pos, energy=energy, forces=forces))
    return frames


def test_recovers_exact_references_from_noiseless_data() -> None:
    stats = compute_statistics(_random_molecules(300))
    for z, e in TRUE_REFS.items():
        sym = {1: "H", 6: "C", 7: "N", 8: "O", 16: "S"}[z]
        assert stats.element_energies[sym] == pytest.approx(e, abs=1e-8)
    assert stats.residual_rms < 1e-7
    assert stats.residual_rms_per_atom < 1e-8
    assert stats.degenerate == []


def test_noisy_data_and_statistics_against_direct_numpy() -> None:
    frames = _random_molecules(400, seed=1, noise=0.05)
    stats = compute_statistics(frames, elements=["H", "C", "N", "O", "S", "Fe"])
    # direct dense least squares as the reference implementation
    zs = [1, 6, 7, 8, 16]
    a = np.array([[np.sum(f.numbers == z) for z in zs] for f in frames], dtype=float)
    b = np.array([f.energy for f in frames])
    x, *_ = np.linalg.lstsq(a, b, rcond=None)
    got = [stats.element_energies[s] for s in ["H", "C", "N", "O", "S"]]
    np.testing.assert_allclose(got, x, rtol=0, atol=1e-7)
    r = b - a @ x
    n = a.sum(1)
    assert stats.residual_rms == pytest.approx(np.sqrt(np.mean(r**2)), rel=1e-6)
    assert stats.residual_rms_per_atom == pytest.approx(np.sqrt(np.mean((r / n) ** 2)), rel=1e-6)
    assert 0.02 < stats.residual_rms < 0.08  # noise level 0.05 eV
    epa = b / n
    assert stats.energy_per_atom_mean == pytest.approx(epa.mean(), rel=1e-10)
    assert stats.energy_per_atom_std == pytest.approx(epa.std(), rel=1e-6)
    f = np.concatenate([fr.forces for fr in frames])
    assert stats.force_rms == pytest.approx(np.sqrt(np.mean(f**2)), rel=1e-10)
    assert stats.n_frames == 400 and stats.n_atoms == int(n.sum())
    assert stats.element_counts["H"] == int(a[:, 0].sum())
    # requested element absent from the data: reference 0 and reported
    assert stats.absent_elements == ["Fe"] and stats.element_energies["Fe"] == 0.0
    np.testing.assert_allclose(stats.reference_vector(["S", "Fe", "H"]), [x[4], 0.0, x[0]])


def test_chunked_equals_unchunked_and_merge() -> None:
    frames = _random_molecules(257, seed=2, noise=0.1)
    one = compute_statistics(frames, chunk_frames=100000)
    small = compute_statistics(frames, chunk_frames=7)
    for key in one.element_energies:
        assert small.element_energies[key] == pytest.approx(one.element_energies[key], abs=1e-8)
    for key in ("residual_rms", "residual_rms_per_atom", "force_rms", "energy_per_atom_mean", "energy_per_atom_std"):
        assert getattr(small, key) == pytest.approx(getattr(one, key), rel=1e-8)
    # two accumulators with different internal shifts, merged, give the same answer
    a, b = ElementReferenceAccumulator(), ElementReferenceAccumulator()
    a.add_frames(frames[:50])
    b.add_frames(frames[50:][::-1])
    a.merge(b)
    merged = a.solve()
    for key in one.element_energies:
        assert merged.element_energies[key] == pytest.approx(one.element_energies[key], abs=1e-7)
    assert merged.residual_rms == pytest.approx(one.residual_rms, rel=1e-7)
    assert merged.energy_per_atom_std == pytest.approx(one.energy_per_atom_std, rel=1e-7)


def test_fixed_ratio_warns_and_returns_minimum_norm() -> None:
    # every frame is (H2O)_k plus one CO2 molecule: H:O within water is fixed, but C, O appear otherwise
    rng = np.random.default_rng(3)
    frames = []
    e_h2o, e_c = -14.2, -9.1
    for _ in range(60):
        k = int(rng.integers(1, 8))
        numbers = [8, 1, 1] * k
        frames.append(Frame(numbers=numbers, positions=rng.uniform(0, 5, (3 * k, 3)), energy=k * e_h2o))
    with pytest.warns(DegenerateReferenceWarning, match=r"H:.*O:|O:.*H:"):
        stats = compute_statistics(frames)
    assert len(stats.degenerate) == 1
    e_h, e_o = stats.element_energies["H"], stats.element_energies["O"]
    assert 2 * e_h + e_o == pytest.approx(e_h2o, abs=1e-9)  # the identifiable combination is exact
    # minimum norm: (e_O, e_H) is parallel to (1, 2) — same as numpy's lstsq
    x, *_ = np.linalg.lstsq(np.array([[1.0, 2.0]]), [e_h2o], rcond=None)
    assert (e_o, e_h) == pytest.approx(tuple(x), abs=1e-9)
    assert stats.residual_rms < 1e-9
    # with an element that varies independently the rest stays well-posed and no warning is raised
    for i in range(20):
        frames.append(Frame(numbers=[6, 8, 8], positions=rng.uniform(0, 5, (3, 3)), energy=e_c + i * 0))
    frames.append(Frame(numbers=[1, 1], positions=[[0, 0, 0], [0, 0, 0.74]], energy=-31.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compute_statistics(frames)
    # ridge: no warning, finite answer close to the identifiable combination
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ridged = compute_statistics(frames[:60], ridge=1e-6)
    assert 2 * ridged.element_energies["H"] + ridged.element_energies["O"] == pytest.approx(e_h2o, abs=1e-4)


def _write_raw_lam_h5(path: Path, frames: list[Frame]) -> None:
    """Tiny hand-made file with the LAM-H5 layout (independent of write_h5)."""
    n = np.array([f.n_atoms for f in frames])
    with h5py.File(path, "w") as h5:
        h5.attrs["format"] = "lam-h5"
        h5["offsets"] = np.concatenate([[0], np.cumsum(n)]).astype(np.int64)
        h5["numbers"] = np.concatenate([f.numbers for f in frames]).astype(np.int16)
        h5["positions"] = np.concatenate([f.positions for f in frames])
        h5["forces"] = np.concatenate([f.forces if f.forces is not None else np.zeros((f.n_atoms, 3))
                                       for f in frames])
        h5["has_forces"] = np.array([f.forces is not None for f in frames])
        h5["energy"] = np.array([f.energy if f.energy is not None else 0.0 for f in frames])
        h5["has_energy"] = np.array([f.energy is not None for f in frames])


def test_h5_fast_path_matches_frame_path(tmp_path: Path) -> None:
    frames = _random_molecules(120, seed=4, noise=0.02)
    # some frames without labels: they must be ignored by the fit / force RMS
    frames[5] = Frame(numbers=frames[5].numbers, positions=frames[5].positions)
    frames[7] = Frame(numbers=frames[7].numbers, positions=frames[7].positions, energy=frames[7].energy)
    ref = compute_statistics(frames)
    raw = tmp_path / "raw.h5"
    _write_raw_lam_h5(raw, frames)
    lam = tmp_path / "lam.h5"
    assert write_h5(lam, frames, functional="test", head="t", validate=False) == 120
    for source in (raw, str(lam), H5Reader(lam), h5py.File(raw, "r")):
        got = compute_statistics(source, chunk_frames=33)
        assert got.n_frames == 120 and got.n_frames_energy == 119 and got.n_frames_forces == 118
        for key in ref.element_energies:
            assert got.element_energies[key] == pytest.approx(ref.element_energies[key], abs=1e-7)
        assert got.force_rms == pytest.approx(ref.force_rms, rel=1e-9)
        assert got.residual_rms_per_atom == pytest.approx(ref.residual_rms_per_atom, rel=1e-6)


def test_bad_input_names_file_and_field(tmp_path: Path) -> None:
    frames = _random_molecules(10, seed=5)
    path = tmp_path / "bad.h5"
    _write_raw_lam_h5(path, frames)
    with h5py.File(path, "a") as h5:
        e = h5["energy"][...]
        e[3] = np.nan
        h5["energy"][...] = e
    with pytest.raises(StatisticsError, match=r"bad\.h5.*field 'energy'"):
        compute_statistics(path)
    with h5py.File(path, "a") as h5:
        del h5["numbers"]
    with pytest.raises(StatisticsError, match=r"bad\.h5.*field 'numbers'"):
        compute_statistics(path)
    with pytest.raises(StatisticsError, match="frame 1"):
        compute_statistics([frames[0], "not a frame"])


def test_real_water_and_combustion_data() -> None:
    water = list(read_deepmd(DATA / "deepmd_water_64h2o", validate=False))
    with pytest.warns(DegenerateReferenceWarning):
        ws = compute_statistics(water, elements=["O", "H"])
    e = np.array([f.energy for f in water])
    # references absorb the ~-30 keV total energy: what is left is the thermal spread, per atom ≪ raw spread
    assert ws.residual_rms_per_atom < 0.01 * np.abs(e / 192).mean()
    assert ws.residual_rms < e.std() * 1.0001  # fixed composition: the fit can only remove the mean
    assert 2 * ws.element_energies["H"] + ws.element_energies["O"] == pytest.approx(e.mean() / 64, rel=1e-9)
    assert 0.1 < ws.force_rms < 2.0
    cho = list(read_deepmd(DATA / "deepmd_cho_combustion_nopbc", validate=False))
    cs = compute_statistics(cho, elements=["C", "H", "O"])
    assert cs.degenerate == []
    e = np.array([f.energy for f in cho])
    raw_spread = e.std()
    resid_total = cs.residual_rms
    assert resid_total < 0.01 * raw_spread  # thousands of eV of composition spread removed
    assert cs.n_frames == 2062
