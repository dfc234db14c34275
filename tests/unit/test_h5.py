"""LAM-H5 store: schema, bit-exact round trips of the real datasets, streaming writes, worker-safe reading."""

from __future__ import annotations

import datetime as dt
import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import lam.data.formats.h5 as h5mod
from lam.data.dataset import H5Dataset
from lam.data.errors import DataError
from lam.data.formats.deepmd_npy import read_deepmd
from lam.data.formats.h5 import DATASETS, H5Reader, write_h5
from lam.data.frame import Frame


def _assert_same(a: Frame, b: Frame) -> None:
    """Bit-exact equality, labels present or absent alike."""
    np.testing.assert_array_equal(a.numbers, b.numbers)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.cell, b.cell)
    np.testing.assert_array_equal(a.pbc, b.pbc)
    for name in ("energy", "forces", "virial"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(
    ("fixture", "n_frames", "sizes"),
    [
        ("water_dir", 400, {192}),
        ("cho_dir", 2062, {7, 8, 10}),
        ("gete_dir", 36, {216}),
        ("water_virial_dir", 30, {384}),
    ],
)
def test_h5_round_trip_is_bit_exact(fixture, n_frames, sizes, request, tmp_path: Path) -> None:
    src = request.getfixturevalue(fixture)
    frames = list(read_deepmd(src, validate=False))
    path = tmp_path / "out.h5"
    assert write_h5(path, frames, functional="PBE", head="h", source=str(src), validate=False) == n_frames
    with H5Reader(path) as reader:
        assert len(reader) == n_frames
        assert set(reader.n_atoms.tolist()) == sizes
        assert reader.attrs["n_atoms_total"] == sum(f.n_atoms for f in frames)
        for k in np.linspace(0, n_frames - 1, 7).astype(int):  # random access
            _assert_same(frames[k], reader[int(k)])
        for a, b in zip(frames, reader.iter_frames(), strict=True):  # sequential block reads
            _assert_same(a, b)


def test_schema_attrs_and_layout(water_h5: Path, water_dir: Path) -> None:
    with H5Reader(water_h5) as reader:
        attrs = reader.attrs
    assert attrs["format"] == "lam-h5" and attrs["schema_version"] == 1
    assert attrs["functional"] == "unknown" and attrs["head"] == "water" and attrs["source"] == str(water_dir)
    assert attrs["units_energy"] == "eV" and attrs["units_length"] == "Angstrom"
    assert attrs["units_forces"] == "eV/Angstrom" and attrs["units_virial"] == "eV"
    assert attrs["n_frames"] == 400 and attrs["n_atoms_total"] == 400 * 192
    assert dt.datetime.fromisoformat(attrs["created"]).tzinfo is not None
    expected = {
        "offsets": ((401,), np.int64),
        "numbers": ((76800,), np.int16),
        "positions": ((76800, 3), np.float64),
        "forces": ((76800, 3), np.float64),
        "energy": ((400,), np.float64),
        "has_energy": ((400,), np.bool_),
        "has_forces": ((400,), np.bool_),
        "cell": ((400, 3, 3), np.float64),
        "pbc": ((400, 3), np.bool_),
        "virial": ((400, 3, 3), np.float64),
        "has_virial": ((400,), np.bool_),
    }
    with h5py.File(water_h5, "r") as f:
        assert set(f.keys()) == set(DATASETS) == set(expected)
        for name, (shape, dtype) in expected.items():
            assert f[name].shape == shape and f[name].dtype == dtype, name
            assert f[name].chunks is not None and f[name].compression == "gzip", name
        assert f["has_energy"][()].all() and not f["has_virial"][()].any()


def test_missing_labels_stay_missing_and_bulk_reads(water_virial_dir: Path, tmp_path: Path) -> None:
    frames = list(read_deepmd(water_virial_dir, validate=False))[:5]
    frames[1].energy = None
    frames[2].forces = None
    frames[3].virial = None
    path = tmp_path / "mixed.h5"
    write_h5(path, frames)
    reader = H5Reader(path)
    for a, b in zip(frames, reader, strict=True):
        _assert_same(a, b)
    np.testing.assert_array_equal(reader.read_array("has_energy"), [True, False, True, True, True])
    np.testing.assert_array_equal(reader.read_array("has_forces"), [True, True, False, True, True])
    assert reader.read_array("energy")[1] == 0.0  # missing labels are stored as zeros, flagged False
    assert not reader.read_array("forces")[384 * 2 : 384 * 3].any()
    np.testing.assert_array_equal(reader.read_array("offsets"), np.arange(6) * 384)
    _assert_same(reader[-1], frames[-1])
    with pytest.raises(IndexError):
        reader[5]
    with pytest.raises(DataError, match="no dataset 'stress'"):
        reader.read_array("stress")


def test_streaming_write_in_many_blocks(water_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small flush thresholds: many appends whose boundaries fall inside frames and chunks."""
    monkeypatch.setattr(h5mod, "_FLUSH_ATOMS", 1000)  # a flush every 6 water frames
    consumed = []

    def frames():
        for k, frame in enumerate(read_deepmd(water_dir / "data_0", validate=False)):
            consumed.append(k)
            yield frame

    path = tmp_path / "stream.h5"
    assert write_h5(path, frames(), validate=False) == 80
    reference = list(read_deepmd(water_dir / "data_0", validate=False))
    reader = H5Reader(path)
    np.testing.assert_array_equal(reader.read_array("offsets"), np.arange(81) * 192)
    for a, b in zip(reference, reader.iter_frames(block=7), strict=True):
        _assert_same(a, b)


def test_empty_store(tmp_path: Path) -> None:
    path = tmp_path / "empty.h5"
    assert write_h5(path, []) == 0
    reader = H5Reader(path)
    assert len(reader) == 0 and list(reader) == [] and reader.attrs["n_atoms_total"] == 0


def test_reader_pickles_without_its_handle_and_reopens_per_process(water_h5: Path) -> None:
    reader = H5Reader(water_h5)
    first = reader[3]
    assert reader._h5 is not None and reader._pid == os.getpid()
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._h5 is None  # opened lazily on first access
    _assert_same(clone[3], first)
    # a handle recorded as opened by another process (as after a fork) is never reused
    reader._pid = -1
    stale = reader._h5
    _assert_same(reader[3], first)
    assert reader._h5 is not stale and reader._pid == os.getpid()
    stale.close()


def _energy_and_fmax(frame: Frame) -> torch.Tensor:
    return torch.tensor([frame.energy, np.abs(frame.forces).max(), frame.n_atoms], dtype=torch.float64)


def test_dataset_in_dataloader_workers(water_h5: Path, water_virial_dir: Path, tmp_path: Path) -> None:
    second = tmp_path / "virial.h5"
    write_h5(second, read_deepmd(water_virial_dir, validate=False))
    dataset = H5Dataset([water_h5, second], transform=_energy_and_fmax)
    assert len(dataset) == 430 and dataset.locate(400) == (1, 0) and dataset.locate(-1) == (1, 29)
    expected = torch.stack([dataset[i] for i in range(len(dataset))])  # the parent opens both files first
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=False, num_workers=2)
    got = torch.cat(list(loader))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert set(got[:, 2].tolist()) == {192.0, 384.0}
    plain = H5Dataset(second)
    assert isinstance(plain[0], Frame) and plain[0].virial is not None
    np.testing.assert_array_equal(plain.n_atoms, np.full(30, 384))
