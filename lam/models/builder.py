"""Build a :class:`Potential` from a preset name, and rebuild it from its metadata.

``build_model`` fixes the random seed, dtype, type map and head names, and records them (with the preset and
the overrides) in ``model.build_info`` so that ``build_from_metadata(model.metadata)`` returns a model with
the same architecture (and, with the same seed, the same initial weights). Trained weights then load with
``load_state_dict``.

Presets: ``"small"``, ``"medium"``, ``"large"`` (DPA-2, :mod:`lam.models.presets`) and ``"student"``
(the compact ``se_e2_a`` descriptor).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lam.models.descriptors.se_e2_a import SeE2A
from lam.models.direct_force import DirectForceHead
from lam.models.heads import FittingHead
from lam.models.potential import Potential

STUDENT_PRESET: dict[str, Any] = {
    "rcut": 5.0,
    "rcut_smth": 0.5,
    "neurons": [16, 32, 32],
    "axis_neuron": 8,
    "sel": 64,
    "activation": "tanh",
    "fitting_neurons": [128, 128, 128],
}

DPA2_PRESET_NAMES = ("small", "medium", "large")
_HEAD_KEYS = ("fitting_neurons", "fitting_activation", "fitting_resnet", "fitting_type_input")


def preset_names() -> list[str]:
    """All preset names ``build_model`` accepts."""
    return [*DPA2_PRESET_NAMES, "student"]


def _dtype(value: torch.dtype | str) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    name = str(value).replace("torch.", "")
    if name not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32 or float64, got {value!r}")
    return getattr(torch, name)


def _build_descriptor(preset: str, ntypes: int, kwargs: dict[str, Any]) -> torch.nn.Module:
    if preset == "student":
        return SeE2A(ntypes=ntypes, **kwargs)
    from lam.models.presets import build_dpa2

    return build_dpa2(preset, ntypes, **kwargs)


def _preset_defaults(preset: str) -> dict[str, Any]:
    if preset == "student":
        return dict(STUDENT_PRESET)
    if preset in DPA2_PRESET_NAMES:
        from lam.models.presets import DPA2_PRESETS

        return dict(DPA2_PRESETS[preset])
    raise ValueError(f"unknown model preset {preset!r}; choose one of {preset_names()}")


def build_model(preset: str = "small", type_map: Sequence[str] | None = None,
                heads: Sequence[str] = ("default",), dtype: torch.dtype | str = torch.float32, seed: int = 0,
                direct_force: bool | Mapping[str, Any] = False, **overrides: Any) -> Potential:
    """Build a multi-head potential.

    Args:
        preset: ``"small"``, ``"medium"``, ``"large"`` (DPA-2) or ``"student"`` (se_e2_a).
        type_map: element symbols, e.g. ``["H", "O"]`` (required).
        heads: head names, in index order.
        dtype: ``torch.float32`` or ``torch.float64`` (or their names).
        seed: seed of the parameter initialisation (the global RNG state is restored afterwards).
        direct_force: add a :class:`DirectForceHead` (True, or a dict of its constructor arguments).
        **overrides: descriptor constructor arguments replacing the preset's, plus the head options
            ``fitting_neurons``, ``fitting_activation`` (default ``"tanh"``), ``fitting_resnet``,
            ``fitting_type_input``.
    """
    if not type_map:
        raise ValueError("build_model needs a non-empty type_map, e.g. ['H', 'O']")
    heads = [str(h) for h in heads]
    if not heads or len(set(heads)) != len(heads):
        raise ValueError(f"heads must be non-empty and unique, got {heads}")
    torch_dtype = _dtype(dtype)
    kwargs = _preset_defaults(preset)
    kwargs.update(overrides)
    head_kwargs = {k: kwargs.pop(k) for k in _HEAD_KEYS if k in kwargs}
    ntypes = len(type_map)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        descriptor = _build_descriptor(preset, ntypes, kwargs)
        head_modules = {
            name: FittingHead(descriptor.dim_out, head_kwargs.get("fitting_neurons", [240, 240, 240]), ntypes,
                              activation=head_kwargs.get("fitting_activation", "tanh"),
                              resnet=head_kwargs.get("fitting_resnet", True),
                              type_input=head_kwargs.get("fitting_type_input", True))
            for name in heads
        }
        dfh = None
        if direct_force:
            dfh_kwargs = dict(direct_force) if isinstance(direct_force, Mapping) else {}
            dfh_kwargs.setdefault("rcut", float(descriptor.rcut))
            dfh = DirectForceHead(descriptor.dim_out, **dfh_kwargs)
        model = Potential(descriptor, head_modules, type_map, direct_force_head=dfh)
    model = model.to(torch_dtype)
    model.build_info = {
        "preset": preset,
        "seed": int(seed),
        "overrides": dict(overrides),
        "direct_force_kwargs": (dict(direct_force) if isinstance(direct_force, Mapping)
                                else bool(direct_force)),
    }
    return model


def build_from_metadata(meta: Mapping[str, Any]) -> Potential:
    """Rebuild a model (same architecture, head names/shapes, dtype) from ``model.metadata``."""
    for key in ("preset", "type_map", "heads", "dtype"):
        if key not in meta:
            raise ValueError(f"model metadata lacks {key!r}; got keys {sorted(meta)}")
    model = build_model(meta["preset"], type_map=meta["type_map"], heads=meta["heads"],
                        dtype=meta["dtype"], seed=int(meta.get("seed", 0)),
                        direct_force=meta.get("direct_force_kwargs", False), **dict(meta.get("overrides", {})))
    desc_config = meta.get("descriptor_config")
    current = getattr(model.descriptor, "config", None)
    if desc_config and current is not None and dict(desc_config) != dict(current):
        # settings fitted after construction (e.g. se_e2_a's env_std from data statistics) live in the config
        model.descriptor = type(model.descriptor)(**dict(desc_config)).to(model.dtype)
    dfh_config = meta.get("direct_force")
    if isinstance(dfh_config, Mapping) and model.direct_force_head is not None:
        dfh_config = dict(dfh_config)
        dfh_config.setdefault("kind", "pair")  # models saved before the edge readout had only the pair one
        if dfh_config != model.direct_force_head.config:
            model.direct_force_head = DirectForceHead(**dfh_config).to(model.dtype)
    for name, config in dict(meta.get("head_configs", {})).items():
        if name in model.heads and config != model.heads[name].config:
            model.heads[name] = FittingHead(**config).to(model.dtype)
    return model
