"""DPA-2 size presets matching DeePMD-kit's ``examples/water/dpa2/input_torch_{small,medium,large}.json``.

All three share repinit (tebd 8, rcut 6.0 / smooth 0.5, sel 120, embedding [25, 50, 100], axis 12), the
three-body block (sel 48 on 4.0 / 3.5, embedding [2, 4, 8] — DeePMD-kit's default ``three_body_neuron``) and
the repformer shape (rcut 4.0 / smooth 3.5, sel 48, g1 128, g2 32, axis 4, ``res_residual`` 0.01, no g1
attention, no g1 x g1 update). They differ in the number of repformer layers (3 / 6 / 12) and in the gated
g2 attention (32 x 4 heads), which ``small`` switches off. ``fitting_neurons`` is the fitting-net width that
goes with each preset (not a descriptor argument: :func:`build_dpa2` drops it).
"""

from __future__ import annotations

import copy
from typing import Any

from lam.models.descriptors.dpa2 import DPA2Descriptor

_COMMON: dict[str, Any] = {
    "tebd_dim": 8,
    "repinit_rcut": 6.0,
    "repinit_rcut_smth": 0.5,
    "repinit_sel": 120,
    "repinit_neuron": [25, 50, 100],
    "repinit_axis_neuron": 12,
    "use_three_body": True,
    "three_body_rcut": 4.0,
    "three_body_rcut_smth": 3.5,
    "three_body_sel": 48,
    "three_body_neuron": [2, 4, 8],
    "repformer_rcut": 4.0,
    "repformer_rcut_smth": 3.5,
    "repformer_sel": 48,
    "g1_dim": 128,
    "g2_dim": 32,
    "axis_neuron": 4,
    "update_g1_has_attn": False,
    "attn1_hidden": 128,
    "attn1_nhead": 4,
    "update_g2_has_attn": True,
    "attn2_hidden": 32,
    "attn2_nhead": 4,
    "attn2_has_gate": True,
    "update_g2_has_g1g1": False,
    "update_residual": 0.01,
    "concat_output_tebd": True,
    "fitting_neurons": [240, 240, 240],
}

DPA2_PRESETS: dict[str, dict[str, Any]] = {
    "small": {**_COMMON, "repformer_nlayers": 3, "update_g2_has_attn": False},
    "medium": {**_COMMON, "repformer_nlayers": 6},
    "large": {**_COMMON, "repformer_nlayers": 12},
}

_NOT_DESCRIPTOR_KWARGS = ("fitting_neurons",)


def get_preset(name: str) -> dict[str, Any]:
    """A deep copy of the preset ``name`` (``small``, ``medium`` or ``large``)."""
    if name not in DPA2_PRESETS:
        raise KeyError(f"unknown DPA-2 preset {name!r}; choose one of {sorted(DPA2_PRESETS)}")
    return copy.deepcopy(DPA2_PRESETS[name])


def build_dpa2(preset: str, ntypes: int, **overrides: Any) -> DPA2Descriptor:
    """Build a :class:`DPA2Descriptor` from a preset, with keyword overrides of descriptor arguments."""
    kwargs = get_preset(preset)
    for key in _NOT_DESCRIPTOR_KWARGS:
        kwargs.pop(key)
    unknown = set(overrides) - set(kwargs)
    if unknown:
        raise TypeError(f"build_dpa2: unknown descriptor argument(s) {sorted(unknown)}; "
                        f"valid ones are {sorted(kwargs)}")
    kwargs.update(overrides)
    return DPA2Descriptor(ntypes=ntypes, **kwargs)
