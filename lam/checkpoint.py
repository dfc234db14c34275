"""Exported models: ``model.safetensors`` + ``metadata.json``, loaded without unpickling anything.

An exported model directory holds

* ``model.safetensors`` — the weights (the EMA weights when training used an EMA), plain tensors;
* ``metadata.json`` — ``format_version``, the model's own metadata (enough to rebuild its architecture with
  :func:`lam.models.builder.build_from_metadata`), type map, heads, element references per head, versions of
  ``lam`` and ``torch``, the resolved training configuration and data hashes.

:func:`load` reads JSON and safetensors only, so a model file from an untrusted source cannot execute code.
Files written by another ``format_version`` go through :data:`UPGRADERS` (one function per version step);
without a path to the current version the error says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["FORMAT_VERSION", "METADATA_FILE", "UPGRADERS", "WEIGHTS_FILE", "CheckpointFormatError",
           "export_model", "load", "read_metadata"]

FORMAT_VERSION = 1
"""Version of the exported-model layout written by :func:`export_model`."""
WEIGHTS_FILE = "model.safetensors"
METADATA_FILE = "metadata.json"

_State = dict[str, torch.Tensor]
UPGRADERS: dict[int, Callable[[dict[str, Any], _State], tuple[dict[str, Any], _State]]] = {}
"""``UPGRADERS[v]`` turns (metadata, weights) of format ``v`` into format ``v + 1``; add one per format change."""


class CheckpointFormatError(ValueError):
    """An exported model that cannot be read (missing files, unknown or unsupported format version)."""


def _json_default(value: Any) -> Any:
    if isinstance(value, (torch.dtype, torch.device)):
        return str(value).replace("torch.", "")
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, (set, tuple, Sequence)) and not isinstance(value, (str, bytes)):
        return list(value)
    raise TypeError(f"metadata value of type {type(value).__name__} is not JSON-serialisable: {value!r}")


def _element_references(model: nn.Module) -> dict[str, dict[str, float]]:
    refs: dict[str, dict[str, float]] = {}
    type_map = list(getattr(model, "type_map", []))
    for name, head in getattr(model, "heads", {}).items():
        buf = getattr(head, "element_energy", None)
        if buf is not None and type_map:
            refs[name] = {s: float(v) for s, v in zip(type_map, buf.detach().cpu().tolist())}
    return refs


def export_model(model: nn.Module, directory: str | os.PathLike, config: Mapping[str, Any] | None = None,
                 extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` to ``directory`` (created) as safetensors + JSON; returns the directory.

    Args:
        model: a potential with a ``metadata`` property (rebuildable with ``build_from_metadata``).
        directory: output directory; existing files of the same names are replaced atomically.
        config: the resolved run configuration (stored verbatim).
        extra: more JSON-serialisable entries (e.g. ``data_hashes``, ``metrics``).
    """
    from safetensors.torch import save_file

    import lam

    if not hasattr(model, "metadata"):
        raise TypeError(f"{type(model).__name__} has no 'metadata' property: cannot export it")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "lam_version": lam.__version__,
        "torch_version": str(torch.__version__),
        "model": dict(model.metadata),
        "type_map": list(getattr(model, "type_map", [])),
        "heads": list(getattr(model, "head_names", [])),
        "element_references": _element_references(model),
        "config": dict(config) if config is not None else None,
    }
    for key, value in dict(extra or {}).items():
        if key in meta:
            raise ValueError(f"extra metadata key {key!r} collides with a reserved key")
        meta[key] = value
    text = json.dumps(meta, indent=2, sort_keys=True, default=_json_default)
    tmp_w, tmp_m = out / (WEIGHTS_FILE + ".tmp"), out / (METADATA_FILE + ".tmp")
    save_file(state, str(tmp_w), metadata={"format": "pt", "lam_format_version": str(FORMAT_VERSION)})
    tmp_m.write_text(text)
    os.replace(tmp_w, out / WEIGHTS_FILE)
    os.replace(tmp_m, out / METADATA_FILE)
    return out


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``metadata.json`` of an exported model directory (or of the file itself)."""
    p = Path(path)
    meta_path = p / METADATA_FILE if p.is_dir() else p
    if not meta_path.is_file():
        raise CheckpointFormatError(f"{meta_path}: not found; an exported model directory holds "
                                    f"{WEIGHTS_FILE} and {METADATA_FILE}")
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointFormatError(f"{meta_path}: invalid JSON ({exc})") from exc


def _upgrade(meta: dict[str, Any], state: dict[str, torch.Tensor], where: Path
             ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise CheckpointFormatError(f"{where}: metadata has no integer 'format_version' (got {version!r})")
    if version > FORMAT_VERSION:
        raise CheckpointFormatError(
            f"{where}: format_version {version} was written by a newer lam (this lam {_lam_version()} reads up "
            f"to {FORMAT_VERSION}); upgrade lam")
    while version < FORMAT_VERSION:
        if version not in UPGRADERS:
            raise CheckpointFormatError(
                f"{where}: format_version {version} is not supported by lam {_lam_version()} (current "
                f"{FORMAT_VERSION}) and no upgrader from {version} to {version + 1} is registered")
        meta, state = UPGRADERS[version](meta, state)
        version += 1
        meta["format_version"] = version
    return meta, state


def _lam_version() -> str:
    import lam

    return lam.__version__


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load an exported model directory → ``Potential`` in eval mode (no pickle involved).

    Raises :class:`CheckpointFormatError` for a missing file or an unsupported ``format_version``.
    """
    from safetensors.torch import load_file

    from lam.models.builder import build_from_metadata

    p = Path(path)
    if p.is_file() and p.name in (WEIGHTS_FILE, METADATA_FILE):
        p = p.parent
    weights = p / WEIGHTS_FILE
    meta = read_metadata(p)
    if not weights.is_file():
        raise CheckpointFormatError(f"{weights}: not found next to {METADATA_FILE}")
    state = load_file(str(weights), device=str(map_location))
    meta, state = _upgrade(meta, state, p)
    if "model" not in meta:
        raise CheckpointFormatError(f"{p / METADATA_FILE}: no 'model' entry to rebuild the architecture from")
    model = build_from_metadata(meta["model"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointFormatError(
            f"{weights}: weights do not match the architecture in {METADATA_FILE} "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.to(map_location)
    model.eval()
    model.export_metadata = meta  # type: ignore[attr-defined]
    return model
