"""Dataset manifests: schema validation, hashing, caching, resolve (lam.data.manifest)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from lam.data import manifest as mf
from lam.data.manifest import (
    ChecksumMismatchError,
    ManifestError,
    list_manifests,
    load_manifest,
    resolve,
    sha256_dir,
    sha256_file,
    sha256_path,
)

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "datasets_manifest"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("LAM_CACHE", str(cache))
    return cache


def _good(**over: object) -> dict:
    d = {
        "name": "toy", "head": "toy_head", "functional": "PBE", "format": "lam-h5", "path": "toy.h5",
        "url": "https://example.org/toy.h5", "sha256": None,
        "units": {"energy": "eV", "length": "angstrom", "forces": "eV/angstrom"},
        "elements": ["H", "O"], "license": "CC0-1.0", "citation": "nobody", "description": "toy set",
    }
    d.update(over)
    return d


def _write(tmp_path: Path, data: dict, name: str = "toy.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_repository_manifests_are_valid_and_local_hashes_match() -> None:
    ms = {m.name: m for m in list_manifests(MANIFESTS)}
    for name in ("mptrj", "ani1x", "oc20_s2ef_200k", "spice2"):
        m = ms[name]
        assert m.url.startswith("https://") and m.license and m.citation and m.converter
        assert (ROOT / m.converter).is_file()
    assert ms["spice2"].license == "CC0-1.0" and ms["mptrj"].license == "CC-BY-4.0"
    assert ms["ani1x"].units.energy == "hartree" and ms["spice2"].units.length == "bohr"
    deepmd = [m for m in ms.values() if m.format == "deepmd" and not m.name.startswith("demo_")]
    assert len(deepmd) == 4
    for m in deepmd:
        assert m.license == "LGPL-3.0-or-later" and m.functional == "unknown"
        assert m.local_path == ROOT / "tests" / "data" / m.name
        assert resolve(m) == m.local_path  # real sha256 of the copied DeePMD-kit data


def test_sha256_dir_matches_coreutils_pipeline(tmp_path: Path) -> None:
    d = tmp_path / "d"
    (d / "sub dir").mkdir(parents=True)
    (d / "b.txt").write_bytes(b"bee\n")
    (d / "a.npy").write_bytes(bytes(range(256)))
    (d / "sub dir" / "z").write_bytes(b"")
    lines = sorted(
        (f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(d).as_posix()}\n"
         for p in d.rglob("*") if p.is_file()), key=lambda s: s.split("  ", 1)[1].encode())
    assert sha256_dir(d) == hashlib.sha256("".join(lines).encode()).hexdigest()
    if shutil.which("sha256sum") and shutil.which("find"):
        out = subprocess.run(
            "find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum",
            shell=True, cwd=d, capture_output=True, text=True, check=True).stdout.split()[0]
        assert out == sha256_dir(d)
    before = sha256_dir(d)
    (d / "b.txt").rename(d / "c.txt")  # a rename changes the hash
    assert sha256_dir(d) != before


def test_schema_errors_name_file_and_field(tmp_path: Path) -> None:
    cases = [
        ({"format": "xyz"}, "format"),
        ({"sha256": "abc"}, "sha256"),
        ({"elements": ["H", "Xx"]}, "elements"),
        ({"units": {"energy": "eV", "length": "angstrom"}}, "units"),
        ({"units": {"energy": "Ry", "length": "angstrom", "forces": "Ry/angstrom"}}, "units.energy"),
        ({"url": "not-a-url"}, "url"),
        ({"path": None, "url": None}, "path"),
        ({"name": "bad name!"}, "name"),
        ({"size_bytes": -3}, "size_bytes"),
    ]
    for over, field in cases:
        p = _write(tmp_path, _good(**over))
        with pytest.raises(ManifestError) as err:
            load_manifest(p)
        assert str(p) in str(err.value) and f"field '{field}'" in str(err.value), str(err.value)
    bad = _good()
    del bad["license"]
    with pytest.raises(ManifestError, match=r"toy\.yaml: field 'license': is required"):
        load_manifest(_write(tmp_path, bad))
    with pytest.raises(ManifestError, match="unknown field"):
        load_manifest(_write(tmp_path, _good(colour="blue")))
    (tmp_path / "broken.yaml").write_text("name: [unclosed")
    with pytest.raises(ManifestError, match="not valid YAML"):
        load_manifest(tmp_path / "broken.yaml")


def test_duplicate_names_rejected(tmp_path: Path) -> None:
    _write(tmp_path, _good(), "a.yaml")
    _write(tmp_path, _good(), "b.yaml")
    with pytest.raises(ManifestError, match="also used by"):
        list_manifests(tmp_path)


def test_resolve_missing_file_points_to_url_and_converter(tmp_path: Path) -> None:
    m = load_manifest(_write(tmp_path, _good(converter="scripts/convert_toy.py")))
    with pytest.raises(ManifestError) as err:
        resolve(m)
    msg = str(err.value)
    assert "toy.h5" in msg and "https://example.org/toy.h5" in msg and "scripts/convert_toy.py" in msg


def test_resolve_verifies_and_detects_corruption(tmp_path: Path) -> None:
    data = tmp_path / "toy.h5"
    data.write_bytes(b"x" * 5000)
    good = sha256_file(data)
    m = load_manifest(_write(tmp_path, _good(sha256=good)))
    assert resolve(m) == data
    data.write_bytes(b"y" * 5000)  # same size, new content and mtime
    with pytest.raises(ChecksumMismatchError) as err:
        resolve(m)
    msg = str(err.value)
    assert good in msg and sha256_file(data) in msg and str(data) in msg


def test_hash_cache_hit_and_rehash_on_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             _private_cache: Path) -> None:
    data = tmp_path / "big.bin"
    data.write_bytes(os.urandom(3000))
    calls = []
    real = mf.sha256_file

    def counting(path: object, chunk: int = 1 << 20) -> str:
        calls.append(path)
        return real(path, chunk)

    monkeypatch.setattr(mf, "sha256_file", counting)
    h1 = sha256_path(data)
    h2 = sha256_path(data)
    assert h1 == h2 and len(calls) == 1  # second call served from the cache
    assert (_private_cache / "sha256_cache.json").is_file()
    st = data.stat()
    data.write_bytes(os.urandom(3000))
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    h3 = sha256_path(data)
    assert len(calls) == 2 and h3 != h1 and h3 == real(data)


def test_null_sha256_refused_unless_explicit(tmp_path: Path, _private_cache: Path) -> None:
    data = tmp_path / "toy.h5"
    data.write_bytes(b"payload")
    m = load_manifest(_write(tmp_path, _good(sha256=None)))
    with pytest.raises(ManifestError, match="trust_on_first_use"):
        resolve(m)
    assert resolve(m, verify=False) == data
    assert resolve(m, sha256=sha256_file(data)) == data
    with pytest.raises(ChecksumMismatchError):
        resolve(m, sha256="0" * 64)
    assert resolve(m, trust_on_first_use=True) == data
    assert resolve(m) == data  # recorded hash now used
    data.write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatchError, match="trust-on-first-use"):
        resolve(m)


def test_upstream_md5_is_checked(tmp_path: Path) -> None:
    data = tmp_path / "toy.h5"
    data.write_bytes(b"payload")
    md5 = hashlib.md5(b"payload").hexdigest()
    m = load_manifest(_write(tmp_path, _good(md5=md5)))
    assert resolve(m) == data
    data.write_bytes(b"payloaX")
    with pytest.raises(ChecksumMismatchError):
        resolve(m)  # the recorded sha256 (from the md5-verified file) no longer matches
    m2 = load_manifest(_write(tmp_path, _good(name="toy2", md5="0" * 32), "toy2.yaml"))
    with pytest.raises(ChecksumMismatchError, match="md5 mismatch"):
        resolve(m2)
