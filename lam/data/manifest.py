"""Dataset manifests: one YAML per dataset, with provenance, units and a sha256 that is checked before use.

Schema (documented in ``datasets_manifest/README.md``)::

    name: mptrj                     # unique, [A-Za-z0-9_.-]
    head: mptrj_pbe                 # fitting head the data trains
    functional: PBE/PBE+U           # level of theory ("unknown" allowed)
    basis: null                     # optional (molecular sets)
    format: mptrj-json              # one of FORMATS
    path: ../data/raw/MPtrj.json    # relative to this YAML; and/or
    url: https://...                # where to download it
    sha256: null                    # hex digest, or null when not computed yet
    md5: 1234...                    # optional upstream-published checksum
    size_bytes: 12186903982         # optional
    converter: scripts/convert_mptrj.py   # optional, how to get a LAM-H5 from it
    units: {energy: eV, length: angstrom, forces: eV/angstrom}
    elements: [H, Li, ...]
    n_frames: 1580395               # optional
    license: CC-BY-4.0
    citation: "..."
    description: "..."

:func:`resolve` returns the local path after checking that it exists and that its sha256 matches. Hashes are
cached in ``<cache>/sha256_cache.json`` keyed by (path, size, mtime_ns), so a big unchanged file is hashed
once; any change of size or mtime forces a rehash. A directory is hashed with :func:`sha256_dir`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lam.data.errors import DataError

__all__ = [
    "FORMATS",
    "ChecksumMismatchError",
    "DatasetManifest",
    "ManifestError",
    "Units",
    "cache_dir",
    "list_manifests",
    "load_manifest",
    "resolve",
    "sha256_dir",
    "sha256_file",
    "sha256_path",
]

FORMATS = ("lam-h5", "extxyz", "deepmd", "ani1x-h5", "spice-h5", "mptrj-json", "oc20-extxyz")
_REQUIRED = ("name", "head", "functional", "format", "units", "elements", "license", "citation", "description")
_OPTIONAL = ("basis", "path", "url", "sha256", "md5", "size_bytes", "n_frames", "converter", "notes")
_ENERGY_UNITS = ("eV", "hartree", "kcal/mol", "kJ/mol")
_LENGTH_UNITS = ("angstrom", "bohr", "nm")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


class ManifestError(DataError):
    """A manifest is invalid or its data cannot be used; the message names the YAML file and the field."""

    def __init__(self, message: str, *, file: str | os.PathLike | None = None, field: str | None = None,
                 frame: int | None = None) -> None:
        super().__init__(message, file=None if file is None else str(file), frame=frame, field=field)


class ChecksumMismatchError(ManifestError):
    """The data on disk does not have the sha256 recorded in its manifest."""


@dataclass(frozen=True)
class Units:
    """Units of the data file as it is stored (converters turn them into eV and Å)."""

    energy: str = "eV"
    length: str = "angstrom"
    forces: str = "eV/angstrom"


@dataclass
class DatasetManifest:
    """One dataset's provenance record, loaded from ``datasets_manifest/<name>.yaml``."""

    name: str
    head: str
    functional: str
    format: str
    units: Units
    elements: list[str]
    license: str
    citation: str
    description: str
    basis: str | None = None
    path: str | None = None
    url: str | None = None
    sha256: str | None = None
    md5: str | None = None
    size_bytes: int | None = None
    n_frames: int | None = None
    converter: str | None = None
    notes: str | None = None
    source: Path | None = field(default=None, compare=False)

    @property
    def local_path(self) -> Path | None:
        """``path`` resolved relative to the YAML file's folder (``None`` when the manifest has no path)."""
        if self.path is None:
            return None
        p = Path(self.path).expanduser()
        if not p.is_absolute() and self.source is not None:
            p = self.source.parent / p
        return Path(os.path.normpath(p))

    def to_dict(self) -> dict[str, Any]:
        """The YAML-serialisable mapping (without ``source``)."""
        d = asdict(self)
        d.pop("source")
        return d


def _element_symbols() -> set[str]:
    from ase.data import chemical_symbols

    return set(chemical_symbols[1:])


def _check_str(data: dict, key: str, file: Path, *, optional: bool = False) -> str | None:
    value = data.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"must be a non-empty string, got {value!r}", file=file, field=key)
    return value.strip()


def _check_int(data: dict, key: str, file: Path) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ManifestError(f"must be a non-negative integer, got {value!r}", file=file, field=key)
    return value


def manifest_from_dict(data: Any, file: str | os.PathLike) -> DatasetManifest:
    """Validate a parsed YAML mapping; ``file`` is used for error messages and to resolve ``path``."""
    file = Path(file)
    if not isinstance(data, dict):
        raise ManifestError(f"top level must be a mapping, got {type(data).__name__}", file=file)
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ManifestError(f"unknown field(s) {unknown}; allowed: {sorted(_REQUIRED + _OPTIONAL)}", file=file)
    for key in _REQUIRED:
        if key not in data:
            raise ManifestError("is required", file=file, field=key)
    name = _check_str(data, "name", file)
    if not _NAME_RE.match(name):
        raise ManifestError(f"{name!r} may only contain letters, digits, '_', '.', '-'", file=file, field="name")
    fmt = _check_str(data, "format", file)
    if fmt not in FORMATS:
        raise ManifestError(f"{fmt!r} is not one of {list(FORMATS)}", file=file, field="format")
    path = _check_str(data, "path", file, optional=True)
    url = _check_str(data, "url", file, optional=True)
    if path is None and url is None:
        raise ManifestError("a manifest needs 'path' and/or 'url'", file=file, field="path")
    if url is not None and not re.match(r"^(https?|ftp|s3)://", url):
        raise ManifestError(f"{url!r} is not an http(s)/ftp/s3 URL", file=file, field="url")
    sha = data.get("sha256")
    if sha is not None:
        if not isinstance(sha, str) or not _HEX64.match(sha.lower()):
            raise ManifestError(f"must be 64 hex digits or null, got {sha!r}", file=file, field="sha256")
        sha = sha.lower()
    md5 = data.get("md5")
    if md5 is not None:
        if not isinstance(md5, str) or not _HEX32.match(md5.lower()):
            raise ManifestError(f"must be 32 hex digits or null, got {md5!r}", file=file, field="md5")
        md5 = md5.lower()
    units = data["units"]
    if not isinstance(units, dict) or set(units) != {"energy", "length", "forces"}:
        raise ManifestError(f"must be a mapping with exactly energy, length, forces; got {units!r}", file=file,
                            field="units")
    if units["energy"] not in _ENERGY_UNITS:
        raise ManifestError(f"{units['energy']!r} not in {list(_ENERGY_UNITS)}", file=file, field="units.energy")
    if units["length"] not in _LENGTH_UNITS:
        raise ManifestError(f"{units['length']!r} not in {list(_LENGTH_UNITS)}", file=file, field="units.length")
    expected_forces = {f"{e}/{lu}" for e in _ENERGY_UNITS for lu in _LENGTH_UNITS}
    if units["forces"] not in expected_forces:
        raise ManifestError(f"{units['forces']!r} must look like '<energy>/<length>', e.g. 'eV/angstrom'",
                            file=file, field="units.forces")
    elements = data["elements"]
    if not isinstance(elements, list) or not elements:
        raise ManifestError("must be a non-empty list of element symbols", file=file, field="elements")
    known = _element_symbols()
    bad = [e for e in elements if e not in known]
    if bad:
        raise ManifestError(f"unknown element symbol(s) {bad}", file=file, field="elements")
    if len(set(elements)) != len(elements):
        raise ManifestError("contains duplicates", file=file, field="elements")
    return DatasetManifest(
        name=name,
        head=_check_str(data, "head", file),
        functional=_check_str(data, "functional", file),
        format=fmt,
        units=Units(**units),
        elements=list(elements),
        license=_check_str(data, "license", file),
        citation=_check_str(data, "citation", file),
        description=_check_str(data, "description", file),
        basis=_check_str(data, "basis", file, optional=True),
        path=path,
        url=url,
        sha256=sha,
        md5=md5,
        size_bytes=_check_int(data, "size_bytes", file),
        n_frames=_check_int(data, "n_frames", file),
        converter=_check_str(data, "converter", file, optional=True),
        notes=_check_str(data, "notes", file, optional=True),
        source=file.resolve(),
    )


def load_manifest(path: str | os.PathLike) -> DatasetManifest:
    """Read and validate one manifest YAML. Raises :class:`ManifestError` naming the file and field."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError("manifest file does not exist", file=path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ManifestError(f"is not valid YAML: {exc}", file=path) from exc
    return manifest_from_dict(data, path)


def list_manifests(directory: str | os.PathLike) -> list[DatasetManifest]:
    """All ``*.yaml`` / ``*.yml`` manifests in ``directory``, sorted by name; dataset names must be unique."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ManifestError("manifest directory does not exist", file=directory)
    files = sorted(list(directory.glob("*.yaml")) + list(directory.glob("*.yml")))
    out = [load_manifest(f) for f in files]
    seen: dict[str, Path] = {}
    for m in out:
        if m.name in seen:
            raise ManifestError(f"dataset name {m.name!r} is also used by {seen[m.name]}", file=m.source,
                                field="name")
        seen[m.name] = m.source  # type: ignore[assignment]
    return sorted(out, key=lambda m: m.name)


# ----------------------------------------------------------------------------------------------- hashing


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of one file, read in ``chunk``-byte blocks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _dir_files(path: Path) -> list[tuple[str, Path]]:
    files = []
    for root, dirs, names in os.walk(path, followlinks=False):
        dirs.sort()
        for name in names:
            full = Path(root) / name
            if full.is_file():
                files.append((full.relative_to(path).as_posix(), full))
    files.sort(key=lambda t: t[0].encode("utf-8"))
    return files


def sha256_dir(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Deterministic hash of a directory tree.

    It is the sha256 of the text made of one line ``"<sha256 of file>  <relative/posix/path>\\n"`` per regular
    file, sorted by the UTF-8 bytes of the relative path: exactly what
    ``cd DIR && find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum`` prints.
    File names, contents and layout count; timestamps, permissions and empty folders do not.
    """
    path = Path(path)
    lines = [f"{sha256_file(full, chunk)}  {rel}\n" for rel, full in _dir_files(path)]
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def cache_dir() -> Path:
    """The user cache folder: ``$LAM_CACHE``, else ``$XDG_CACHE_HOME/lam``, else ``~/.cache/lam``."""
    if os.environ.get("LAM_CACHE"):
        return Path(os.environ["LAM_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "lam"


def _fingerprint(path: Path) -> dict[str, int]:
    """(size, mtime_ns) of a file; for a folder the total size, the newest mtime and the file count."""
    if path.is_dir():
        size, mtime, count = 0, path.stat().st_mtime_ns, 0
        for _, full in _dir_files(path):
            st = full.stat()
            size += st.st_size
            mtime = max(mtime, st.st_mtime_ns)
            count += 1
        return {"size": size, "mtime_ns": mtime, "n_files": count}
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:  # a read-only cache never stops a run; it only costs a rehash next time
        pass


def sha256_path(path: str | os.PathLike, *, use_cache: bool = True) -> str:
    """sha256 of a file or folder (:func:`sha256_dir`), cached by (absolute path, size, mtime_ns)."""
    path = Path(path).resolve()
    cache_file = cache_dir() / "sha256_cache.json"
    fp = _fingerprint(path)
    key = str(path)
    if use_cache:
        entry = _read_json(cache_file).get(key)
        if entry is not None and entry.get("fingerprint") == fp:
            return entry["sha256"]
    digest = sha256_dir(path) if path.is_dir() else sha256_file(path)
    if use_cache:
        cache = _read_json(cache_file)
        cache[key] = {"fingerprint": fp, "sha256": digest}
        _write_json(cache_file, cache)
    return digest


def _md5_and_sha256(path: Path, chunk: int = 1 << 20) -> tuple[str, str]:
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            md5.update(block)
            sha.update(block)
    return md5.hexdigest(), sha.hexdigest()


def _trust_key(m: DatasetManifest) -> str:
    return f"{m.name}|{m.url or ''}|{m.local_path}"


def resolve(
    manifest: DatasetManifest,
    verify: bool = True,
    *,
    sha256: str | None = None,
    trust_on_first_use: bool = False,
) -> Path:
    """Local path of a dataset after checking that it exists and (``verify``) that its sha256 matches.

    Expected hash, in order: ``manifest.sha256``; the ``sha256`` argument; a hash recorded earlier by
    trust-on-first-use. When none is known the data is refused, unless the manifest carries an upstream
    ``md5`` (then the file must match it, and its sha256 is recorded), or ``trust_on_first_use=True``
    (the current file's sha256 is recorded in ``<cache>/trusted_sha256.json`` and every later call checks
    against it). ``verify=False`` skips hashing entirely (existence is still checked).
    """
    src = manifest.source or Path("<manifest>")
    local = manifest.local_path
    if local is None:
        raise ManifestError(
            f"dataset {manifest.name!r} has no local 'path'; download it from {manifest.url} and add 'path'"
            + (f", or convert it with {manifest.converter}" if manifest.converter else ""),
            file=src, field="path")
    if not local.exists():
        hint = []
        if manifest.url:
            hint.append(f"download it from {manifest.url}")
        if manifest.converter:
            hint.append(f"convert it with `python {manifest.converter} SRC DST`")
        raise ManifestError(
            f"data for {manifest.name!r} not found at {local}" + (": " + "; ".join(hint) if hint else ""),
            file=src, field="path")
    if not verify:
        return local
    if sha256 is not None and manifest.sha256 is not None and sha256.lower() != manifest.sha256:
        raise ManifestError(f"sha256 argument {sha256} contradicts the manifest's {manifest.sha256}",
                            file=src, field="sha256")
    expected = manifest.sha256 or (sha256.lower() if sha256 else None)
    trust_file = cache_dir() / "trusted_sha256.json"
    origin = "manifest" if manifest.sha256 else "argument"
    if expected is None:
        recorded = _read_json(trust_file).get(_trust_key(manifest))
        if recorded is not None:
            expected, origin = recorded, f"trust-on-first-use record in {trust_file}"
    if expected is None:
        if manifest.md5 is not None and local.is_file():
            md5, actual = _md5_and_sha256(local)
            if md5 != manifest.md5:
                raise ChecksumMismatchError(
                    f"{local}: md5 mismatch (expected upstream md5 {manifest.md5}, actual {md5})",
                    file=src, field="md5")
        elif trust_on_first_use:
            actual = sha256_path(local)
        else:
            raise ManifestError(
                f"dataset {manifest.name!r} has no sha256, so {local} cannot be verified. Pass "
                "resolve(..., sha256='<hex>') / add it to the manifest, or opt in explicitly with "
                "trust_on_first_use=True to record the current file's hash", file=src, field="sha256")
        trusted = _read_json(trust_file)
        trusted[_trust_key(manifest)] = actual
        _write_json(trust_file, trusted)
        return local
    actual = sha256_path(local)
    if actual != expected:
        raise ChecksumMismatchError(
            f"{local}: sha256 mismatch (expected {expected} from {origin}, actual {actual}); the file is "
            "corrupt, incomplete or a different version", file=src, field="sha256")
    return local
