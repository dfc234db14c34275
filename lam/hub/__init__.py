"""Checkpoint hub: pretrained models by name, verified downloads, a local cache, safe loading.

>>> import lam.hub
>>> potential = lam.hub.load("dpa2-s-demo")                       # registry name
>>> potential = lam.hub.load("https://host/m.lam#sha256=3f5a…")    # URL + expected hash
>>> potential = lam.hub.load("runs/export/")                      # export directory or .lam file

Every source is turned into a local export directory (``model.safetensors`` + ``metadata.json``) by
:func:`resolve_source`; :func:`load` then calls ``lam.checkpoint.load``, which reads safetensors and
JSON only. Nothing downloaded is ever unpickled. See ``docs/hub.md``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lam.hub.download import (
    ARCHIVE_MEMBERS,
    METADATA_FILE,
    PICKLE_SUFFIXES,
    ChecksumError,
    DownloadError,
    IncompleteDownloadError,
    UnsafeArchiveError,
    cache_dir,
    check_sha256,
    download,
    file_lock,
    pack_model,
    sha256_file,
    unpack_model,
    validate_export_dir,
)
from lam.hub.registry import (
    ModelEntry,
    Registry,
    RegistryError,
    RegistrySource,
    UnknownModelError,
    get_entry,
    list_models,
    load_registry,
)

if TYPE_CHECKING:
    from lam.models.potential import Potential

__all__ = [
    "ChecksumError",
    "DownloadError",
    "IncompleteDownloadError",
    "ModelEntry",
    "ModelMismatchError",
    "Registry",
    "RegistryError",
    "UnknownModelError",
    "UnsafeArchiveError",
    "cache_dir",
    "download",
    "get_entry",
    "list_models",
    "load",
    "load_registry",
    "pack_model",
    "parse_url",
    "resolve_source",
    "sha256_file",
    "unpack_model",
]

_MANIFEST = ".lam-hub.json"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

RegistryArg = RegistrySource | Iterable[RegistrySource] | None


class ModelMismatchError(ValueError):
    """A downloaded model's metadata contradicts its registry entry (heads or type map)."""


def parse_url(url: str) -> tuple[str, str | None]:
    """Split ``URL#sha256=<hex>`` into the URL to fetch and the expected hash (``None`` if absent)."""
    base, _, fragment = url.partition("#")
    if not fragment:
        return url, None
    params = urllib.parse.parse_qs(fragment, keep_blank_values=True)
    if set(params) != {"sha256"} or len(params["sha256"]) != 1:
        raise ValueError(f"URL fragment of {url!r} must be '#sha256=<64 hex digits>'")
    return base, check_sha256(params["sha256"][0], f"sha256 in {url!r}")


def _verify_manifest(folder: Path) -> bool:
    """True if the unpacked cache entry is complete and its files still have their recorded hashes."""
    try:
        manifest = json.loads((folder / _MANIFEST).read_text())
        return all(sha256_file(folder / name) == manifest["files"][name] for name in ARCHIVE_MEMBERS)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _unpack_cached(archive: Path, sha: str, cache: str | os.PathLike | None) -> Path:
    """Unpack a verified archive (sha256 ``sha``) into ``<cache>/models/<sha>`` once; reuse it afterwards."""
    models = cache_dir(cache) / "models"
    dest = models / sha
    with file_lock(models / f"{sha}.lock"):
        if dest.is_dir() and _verify_manifest(dest):
            return dest
        if dest.exists():
            shutil.rmtree(dest)  # damaged or half-written by an interrupted run
        unpack_model(archive, dest)
        files = {name: sha256_file(dest / name) for name in ARCHIVE_MEMBERS}
        (dest / _MANIFEST).write_text(json.dumps({"archive_sha256": sha, "files": files}, indent=1))
    return dest


def _names(value: Any) -> list[str] | None:
    """Head or element names from metadata written as a list of names, a mapping, or a list of records."""
    if isinstance(value, dict):
        return [str(k) for k in value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, list) and all(isinstance(v, dict) and "name" in v for v in value):
        return [str(v["name"]) for v in value]
    return None


def _check_entry(folder: Path, entry: ModelEntry) -> None:
    meta = json.loads((folder / METADATA_FILE).read_text())
    for key, expected in (("heads", entry.heads), ("type_map", entry.type_map)):
        found = _names(meta.get(key))
        if expected and found is not None and list(expected) != found:
            raise ModelMismatchError(
                f"model '{entry.name}' ({entry.url}): registry {entry.source} lists {key} {list(expected)} "
                f"but its {METADATA_FILE} has {found}"
            )


def _from_local(path: Path, cache: str | os.PathLike | None) -> Path:
    if path.is_dir():
        validate_export_dir(path)
        return path.resolve()
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UnsafeArchiveError(
            f"{path}: pickle checkpoints are not loaded (unsafe); export the model with lam.checkpoint and "
            "load the export directory or its packed .lam file"
        )
    return _unpack_cached(path, sha256_file(path), cache)


def resolve_source(
    source: str | os.PathLike,
    registry: RegistryArg = None,
    *,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> Path:
    """Turn a model source into a verified local export directory.

    ``source`` is one of: an export directory (returned as is after a format check); a ``.lam`` file
    (unpacked into ``<cache>/models/<sha256>``); an ``http(s)://`` or ``file://`` URL of a ``.lam`` file,
    whose sha256 comes from ``URL#sha256=<hex>`` or from a registry entry with that URL; or a model name
    from the registry (built-in + ``$LAM_REGISTRY`` + ``registry``). An existing local path wins over a
    registry name. Downloads are verified before use and cached (see :func:`download`).
    """
    if isinstance(source, os.PathLike):
        return _from_local(Path(source), cache)
    text = str(source).strip()
    if text.startswith(("http://", "https://", "file://")):
        url, sha = parse_url(text)
        entry = None
        if sha is None:
            entry = load_registry(registry).find_by_url(url)
            if entry is None:
                raise ValueError(
                    f"{url}: a URL needs its sha256 to be verified; write it as '{url}#sha256=<hex>' "
                    "or add a registry entry for it"
                )
            sha = entry.sha256
        archive = download(url, sha, cache=cache, progress=progress, timeout=timeout,
                           size=entry.size if entry else None)
        folder = _unpack_cached(archive, sha, cache)
        if entry is not None:
            _check_entry(folder, entry)
        return folder
    path = Path(text).expanduser()
    if path.exists():
        return _from_local(path, cache)
    if not _NAME_RE.match(text) or text.lower().endswith((".lam", ".zip", ".tar", *PICKLE_SUFFIXES)):
        raise FileNotFoundError(f"{text}: no such file or directory (and not a valid model name)")
    entry = load_registry(registry).get(text)
    archive = download(entry.url, entry.sha256, cache=cache, progress=progress, timeout=timeout, size=entry.size)
    folder = _unpack_cached(archive, entry.sha256, cache)
    _check_entry(folder, entry)
    return folder


def load(
    source: str | os.PathLike,
    registry: RegistryArg = None,
    *,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
    **load_kwargs: Any,
) -> Potential:
    """Load a pretrained :class:`~lam.models.potential.Potential` by name, URL or path.

    ``resolve_source`` followed by ``lam.checkpoint.load`` (safetensors + JSON, no unpickling);
    ``load_kwargs`` are passed to the latter (e.g. ``map_location``).
    """
    folder = resolve_source(source, registry, cache=cache, progress=progress)
    try:
        from lam.checkpoint import load as load_checkpoint
    except ImportError as exc:  # pragma: no cover - the loader lives in lam/checkpoint.py
        raise ImportError(f"lam.checkpoint is needed to load {folder}: {exc}") from exc
    return load_checkpoint(folder, **load_kwargs)
