"""Registry of pretrained models: model name → URL, sha256 and description.

A registry is a YAML file (schema in ``lam/hub/registry.yaml`` and ``docs/hub.md``)::

    format_version: 1
    models:
      dpa2-s-demo:
        url: https://example.org/dpa2-s-demo.lam
        sha256: 3f5a...          # 64 hex digits, sha256 of the .lam file
        size: 1234567
        heads: [pbe, wb97x]
        type_map: [H, C, N, O]
        description: ...
        license: Apache-2.0

Registries are layered: the built-in one shipped with the package, then the files or URLs listed in
``$LAM_REGISTRY`` (separated by :data:`os.pathsep`), then the ``registry`` argument of the functions
below. A later registry overrides an entry of the same name from an earlier one.
"""

from __future__ import annotations

import difflib
import os
import re
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ENV_REGISTRY",
    "ModelEntry",
    "Registry",
    "RegistryError",
    "RegistrySource",
    "UnknownModelError",
    "get_entry",
    "list_models",
    "load_registry",
    "split_registry_paths",
]

ENV_REGISTRY = "LAM_REGISTRY"
REGISTRY_FORMAT_VERSION = 1
MAX_REGISTRY_BYTES = 16 * 1024 * 1024
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_URL_SCHEMES = ("http://", "https://", "file://")
_KNOWN_KEYS = {"url", "sha256", "size", "description", "license", "heads", "type_map", "elements", "default_head"}


class RegistryError(ValueError):
    """A registry file is missing, unreadable or does not follow the schema."""


class UnknownModelError(LookupError):
    """A model name is in none of the registries."""

    def __str__(self) -> str:  # LookupError would quote the message like a dict key
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class ModelEntry:
    """One pretrained model: where to download its ``.lam`` archive and what it contains."""

    name: str
    url: str
    sha256: str
    size: int | None = None
    description: str = ""
    license: str = ""
    heads: tuple[str, ...] = ()
    type_map: tuple[str, ...] = ()
    default_head: str | None = None
    source: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The entry in registry-file form (without its name and origin)."""
        out: dict[str, Any] = {"url": self.url, "sha256": self.sha256}
        if self.size is not None:
            out["size"] = self.size
        for key in ("description", "license", "default_head"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.heads:
            out["heads"] = list(self.heads)
        if self.type_map:
            out["type_map"] = list(self.type_map)
        return out


def _str_list(value: Any, where: str, key: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise RegistryError(f"{where}: '{key}' must be a list of non-empty strings, got {value!r}")
    return tuple(value)


def parse_entry(name: Any, raw: Any, source: str) -> ModelEntry:
    """Validate one registry entry; errors name the registry file and the model."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise RegistryError(f"{source}: invalid model name {name!r} (letters, digits, '.', '_', '-')")
    where = f"{source}: model '{name}'"
    if not isinstance(raw, Mapping):
        raise RegistryError(f"{where}: entry must be a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _KNOWN_KEYS)
    if unknown:
        warnings.warn(f"{where}: ignoring unknown keys {unknown}", stacklevel=3)
    for key in ("url", "sha256"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise RegistryError(f"{where}: missing required string field '{key}'")
    url = raw["url"].strip()
    if not url.startswith(_URL_SCHEMES):
        raise RegistryError(f"{where}: url {url!r} must start with one of {', '.join(_URL_SCHEMES)}")
    sha = raw["sha256"].strip().lower()
    if not _SHA256_RE.match(sha):
        raise RegistryError(f"{where}: sha256 must be 64 hexadecimal digits, got {raw['sha256']!r}")
    size = raw.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise RegistryError(f"{where}: size must be a non-negative integer (bytes), got {size!r}")
    for key in ("description", "license", "default_head"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise RegistryError(f"{where}: '{key}' must be a string, got {raw[key]!r}")
    if "type_map" in raw and "elements" in raw and list(raw["type_map"]) != list(raw["elements"]):
        raise RegistryError(f"{where}: 'type_map' and its alias 'elements' disagree")
    type_map = raw.get("type_map", raw.get("elements"))
    heads = _str_list(raw["heads"], where, "heads") if raw.get("heads") is not None else ()
    default_head = raw.get("default_head")
    if default_head and heads and default_head not in heads:
        raise RegistryError(f"{where}: default_head {default_head!r} is not one of heads {list(heads)}")
    return ModelEntry(
        name=name,
        url=url,
        sha256=sha,
        size=size,
        description=raw.get("description") or "",
        license=raw.get("license") or "",
        heads=heads,
        type_map=_str_list(type_map, where, "type_map") if type_map is not None else (),
        default_head=default_head,
        source=source,
    )


def parse_registry(data: Any, source: str) -> dict[str, ModelEntry]:
    """Validate the loaded YAML of one registry file and return its entries by name."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise RegistryError(f"{source}: a registry must be a YAML mapping with a 'models' key")
    version = data.get("format_version", REGISTRY_FORMAT_VERSION)
    if version != REGISTRY_FORMAT_VERSION:
        raise RegistryError(
            f"{source}: registry format_version {version!r} is not supported "
            f"(this lam reads version {REGISTRY_FORMAT_VERSION}); upgrade lam"
        )
    models = data.get("models") or {}
    if not isinstance(models, Mapping):
        raise RegistryError(f"{source}: 'models' must be a mapping of name → entry")
    return {name: parse_entry(name, raw, source) for name, raw in models.items()}


def _read_text(location: str, timeout: float) -> str:
    if location.startswith(_URL_SCHEMES):
        try:
            with urllib.request.urlopen(location, timeout=timeout) as resp:  # noqa: S310 (scheme checked)
                data = resp.read(MAX_REGISTRY_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise RegistryError(f"registry {location}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RegistryError(f"registry {location}: could not fetch ({reason})") from exc
    else:
        path = Path(location).expanduser()
        if not path.is_file():
            raise RegistryError(f"registry file {path} does not exist (from ${ENV_REGISTRY} or argument)")
        with open(path, "rb") as fh:
            data = fh.read(MAX_REGISTRY_BYTES + 1)
    if len(data) > MAX_REGISTRY_BYTES:
        raise RegistryError(f"registry {location} is larger than {MAX_REGISTRY_BYTES} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RegistryError(f"registry {location} is not UTF-8 text") from exc


def _load_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RegistryError(f"{source}: invalid YAML: {exc}") from exc


def split_registry_paths(value: str) -> list[str]:
    """Split ``$LAM_REGISTRY`` on :data:`os.pathsep`, keeping URLs such as ``https://h/r.yaml`` whole."""
    parts = value.split(os.pathsep)
    out: list[str] = []
    i = 0
    while i < len(parts):
        part = parts[i].strip()
        # On POSIX the separator ':' also follows a URL scheme: re-join "https" + "//host/…".
        if os.pathsep == ":" and re.fullmatch(r"(https?|file)", part) and i + 1 < len(parts):
            part = part + ":" + parts[i + 1].strip()
            i += 1
            # … and "https://host" + "8080/r.yaml" when the URL has a port.
            if re.fullmatch(r"[a-z]+://[^/]*", part) and i + 1 < len(parts) and re.match(r"\d+(/|$)", parts[i + 1]):
                part = part + ":" + parts[i + 1].strip()
                i += 1
        if part:
            out.append(part)
        i += 1
    return out


class Registry:
    """Model entries by name, merged from several registry files (later ones win)."""

    def __init__(self, entries: Mapping[str, ModelEntry] | None = None, sources: Sequence[str] = ()):
        self._entries: dict[str, ModelEntry] = dict(entries or {})
        self.sources: list[str] = list(sources)

    def add(self, entries: Mapping[str, ModelEntry], source: str) -> None:
        """Merge ``entries`` over the current ones."""
        self._entries.update(entries)
        self.sources.append(source)

    def names(self) -> list[str]:
        """Sorted model names."""
        return sorted(self._entries)

    def entries(self) -> list[ModelEntry]:
        """All entries, sorted by name."""
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str) -> ModelEntry:
        """The entry called ``name``; :class:`UnknownModelError` lists known names and close matches."""
        if name in self._entries:
            return self._entries[name]
        names = self.names()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        lower = [n for n in names if n.lower() == name.lower() and n not in close]
        hint = f" Did you mean {', '.join(repr(c) for c in lower + close)}?" if lower or close else ""
        known = ", ".join(names) if names else "(none)"
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} Known models: {known}. Registries searched: "
            f"{', '.join(self.sources) or '(none)'}. Add one with ${ENV_REGISTRY} or the registry argument."
        )

    def find_by_url(self, url: str) -> ModelEntry | None:
        """The entry whose url is ``url`` (used to find the sha256 of a bare URL)."""
        for entry in self._entries.values():
            if entry.url == url:
                return entry
        return None


RegistrySource = str | os.PathLike | Mapping[str, Any] | Registry


def builtin_registry_text() -> str:
    """The YAML text of the registry shipped with the package."""
    try:
        return resources.files("lam.hub").joinpath("registry.yaml").read_text(encoding="utf-8")
    except FileNotFoundError as exc:  # a wheel built without the package data
        raise RegistryError(
            "lam/hub/registry.yaml is missing from the installed package (package data not installed); "
            "reinstall lam, or pass use_builtin=False"
        ) from exc


def load_registry(
    registry: RegistrySource | Iterable[RegistrySource] | None = None,
    *,
    use_env: bool = True,
    use_builtin: bool = True,
    timeout: float = 30.0,
) -> Registry:
    """Build the layered registry: built-in, then ``$LAM_REGISTRY``, then ``registry``.

    ``registry`` may be a path or URL of a YAML file, a string of several separated by
    :data:`os.pathsep`, an already-parsed mapping in the file format, a :class:`Registry`, or a list of those.
    A :class:`Registry` instance given alone is returned unchanged.
    """
    if isinstance(registry, Registry):
        return registry
    reg = Registry()
    if use_builtin:
        name = "builtin:lam/hub/registry.yaml"
        reg.add(parse_registry(_load_yaml(builtin_registry_text(), name), name), name)
    extra: list[RegistrySource] = []
    env = os.environ.get(ENV_REGISTRY, "") if use_env else ""
    extra.extend(split_registry_paths(env))
    if registry is not None:
        if isinstance(registry, (str, os.PathLike, Mapping)):
            items: Iterable[RegistrySource] = [registry]
        else:
            items = registry
        for item in items:
            extra.extend(split_registry_paths(item) if isinstance(item, str) else [item])
    for item in extra:
        if isinstance(item, Registry):
            reg.add({e.name: e for e in item.entries()}, ",".join(item.sources) or "Registry")
        elif isinstance(item, Mapping):
            reg.add(parse_registry(item, "<mapping>"), "<mapping>")
        else:
            location = os.fspath(item)
            reg.add(parse_registry(_load_yaml(_read_text(location, timeout), location), location), location)
    return reg


def list_models(registry: RegistrySource | Iterable[RegistrySource] | None = None) -> list[ModelEntry]:
    """All known models (built-in + ``$LAM_REGISTRY`` + ``registry``), sorted by name."""
    return load_registry(registry).entries()


def get_entry(name: str, registry: RegistrySource | Iterable[RegistrySource] | None = None) -> ModelEntry:
    """The registry entry called ``name``; unknown names raise :class:`UnknownModelError`."""
    return load_registry(registry).get(name)
