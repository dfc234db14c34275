"""`python -m lam.data convert|info` on the real test datasets, and its error handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lam.data.__main__ import main
from lam.data.formats import write_extxyz
from lam.data.formats.deepmd_npy import read_deepmd
from lam.data.formats.h5 import H5Reader


def _source(root: Path) -> dict[str, np.ndarray]:
    """Energies, atoms per frame and all force components straight from the npy files (sorted order)."""
    sets = [s for sys_ in sorted(p.parent for p in root.rglob("type.raw")) for s in sorted(sys_.glob("set.*"))]
    coords = [np.load(s / "coord.npy") for s in sets]
    return {
        "energy": np.concatenate([np.load(s / "energy.npy").reshape(-1) for s in sets]).astype(np.float64),
        "sizes": np.concatenate([np.full(c.shape[0], c.shape[1] // 3) for c in coords]),
        "forces": np.concatenate([np.load(s / "force.npy").reshape(-1) for s in sets]).astype(np.float64),
    }


@pytest.mark.parametrize(
    ("fixture", "n_frames", "n_min", "n_max", "elements", "labels"),
    [
        ("water_dir", 400, 192, 192, ["H", "O"], ["energy", "forces"]),
        ("cho_dir", 2062, 7, 10, ["H", "C", "O"], ["energy", "forces"]),
        ("gete_dir", 36, 216, 216, ["Ge", "Te"], ["energy", "forces"]),
        ("water_virial_dir", 30, 384, 384, ["H", "O"], ["energy", "forces", "virial"]),
    ],
)
def test_convert_and_info(fixture, n_frames, n_min, n_max, elements, labels, request, tmp_path, capsys) -> None:
    src = request.getfixturevalue(fixture)
    dst = tmp_path / "out.h5"
    assert main(["convert", str(src), str(dst), "--functional", "PBE", "--head", "h1", "--quiet"]) == 0
    ref = _source(src)
    n_atoms = int(ref["sizes"].sum())
    assert capsys.readouterr().out.strip() == f"wrote {n_frames} frames, {n_atoms} atoms to {dst}"

    reader = H5Reader(dst)
    assert reader.attrs["functional"] == "PBE" and reader.attrs["head"] == "h1"
    assert reader.attrs["source"] == str(src)
    np.testing.assert_array_equal(reader.read_array("energy"), ref["energy"])
    np.testing.assert_array_equal(reader.read_array("forces").reshape(-1), ref["forces"])

    for target in (dst, src):  # info reads LAM-H5 and the original format alike (src validated by convert)
        assert main(["info", str(target), "--json", "--no-validate"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["n_frames"] == n_frames and info["n_atoms"] == n_atoms
        assert (info["n_atoms_min"], info["n_atoms_max"]) == (n_min, n_max)
        assert info["elements"] == elements and info["labels"] == labels
        assert info["label_counts"]["energy"] == n_frames
        assert info["energy_per_atom_mean"] == pytest.approx(np.mean(ref["energy"] / ref["sizes"]), rel=1e-12)
        assert info["energy_per_atom_std"] == pytest.approx(np.std(ref["energy"] / ref["sizes"]), rel=1e-9)
        assert info["force_rms"] == pytest.approx(np.sqrt(np.mean(ref["forces"] ** 2)), rel=1e-9)
    assert info["functional"] is None  # deepmd/npy does not record the functional
    assert main(["info", str(dst)]) == 0
    text = capsys.readouterr().out
    assert f"frames       {n_frames}" in text and "functional   PBE" in text and " ".join(elements) in text


def test_info_text_and_extxyz(water_virial_dir: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "w.extxyz"
    write_extxyz(path, list(read_deepmd(water_virial_dir))[:4])
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "frames       4" in out and "1536 total, 384..384 per frame" in out
    assert "virial 4/4" in out and "not stored in this format" in out


def test_bad_data_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an hdf5 file at all" * 100)
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {bad}: not a readable HDF5 file")
    assert main(["convert", str(tmp_path / "missing_dir"), str(tmp_path / "x.h5")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()


def test_convert_refuses_to_overwrite_without_flag(gete_dir: Path, tmp_path: Path, capsys) -> None:
    dst = tmp_path / "g.h5"
    assert main(["convert", str(gete_dir), str(dst), "--quiet"]) == 0
    assert main(["convert", str(gete_dir), str(dst), "--quiet"]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["convert", str(gete_dir), str(dst), "--quiet", "--overwrite", "--head", "gete"]) == 0
    assert H5Reader(dst).attrs["head"] == "gete"


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "lam.data"]
    helped = subprocess.run([*run, "convert", "--help"], capture_output=True, text=True, check=False)
    assert helped.returncode == 0 and "--energy-key" in helped.stdout and "--functional" in helped.stdout
    bad = tmp_path / "trunc.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    failed = subprocess.run([*run, "info", str(bad)], capture_output=True, text=True, check=False)
    assert failed.returncode == 2
    assert "Traceback" not in failed.stderr and failed.stderr.startswith(f"error: {bad}")
