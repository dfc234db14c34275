"""Fitting heads: per-atom energy from per-atom descriptor features.

A :class:`FittingHead` is a small MLP (DeePMD-style "fitting net") with its own per-element energy reference.
The atomic energy of atom ``i`` of type ``t`` with features ``g_i`` is

    e_i = element_energy[t] + scale * (net(x_i, t) - net(x0_t, t)),   x = (g - input_mean[t]) / input_std[t]

where ``g0_t`` is the descriptor output of an isolated atom of type ``t`` (no neighbours). The subtraction is
done by :class:`lam.models.potential.Potential`, which knows the descriptor; it makes an isolated atom give
exactly its element reference, so the reference is the (only) per-element shift of the head. ``scale`` is a
buffer in eV; ``element_energy`` is a buffer set from a least-squares fit of energies on element counts
(``lam.data.stats``). ``input_mean`` / ``input_std`` (ntypes, dim_in) standardise the descriptor features per
element before the network. All three are fitted from data by
:meth:`lam.models.potential.Potential.fit_output_statistics` (identity / 1 until then): descriptors emit features
whose size depends on the neighbour count and on ``sel`` (often 1e-2 for small molecules), and a network fed
such inputs starts with forces ~100x too small and learns them slowly. They are buffers, so they travel with
the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

_ACTIVATIONS = {"tanh": nn.Tanh, "silu": nn.SiLU, "gelu": nn.GELU, "softplus": nn.Softplus}


def make_activation(name: str) -> nn.Module:
    """Return an activation module by name (``tanh``, ``silu``, ``gelu``, ``softplus``)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}") from None


class ResMLP(nn.Module):
    """MLP with a residual connection on every hidden layer whose input and output widths match.

    The last layer is linear (no activation) and maps to ``dim_out``.
    """

    def __init__(self, dim_in: int, neurons: Sequence[int], dim_out: int, activation: str = "tanh",
                 resnet: bool = True) -> None:
        super().__init__()
        dims = [int(dim_in), *[int(n) for n in neurons]]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.residual: list[bool] = [bool(resnet and a == b) for a, b in zip(dims[:-1], dims[1:])]
        self.act = make_activation(activation)
        self.out = nn.Linear(dims[-1], dim_out)

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.hidden):
            y = self.act(layer(x))
            x = x + y if self.residual[i] else y
        return self.out(x)


class FittingHead(nn.Module):
    """Per-atom energy readout with a per-element energy reference.

    Args:
        dim_in: descriptor feature size.
        neurons: hidden layer widths (DeePMD default ``[240, 240, 240]``).
        ntypes: number of element types (length of the model's type map).
        activation: ``"tanh"`` (DeePMD) or ``"silu"``, ...
        resnet: add residual connections where layer widths match.
        type_input: if True (default) the one-hot element type is concatenated to the features (one shared
            net that still knows the element, as DeePMD's type-embedded fitting); if False the net is shared
            by all elements and only the element reference depends on the type (MACE-style readout).
    """

    __jit_unused_properties__ = ["config"]

    def __init__(self, dim_in: int, neurons: Sequence[int] = (240, 240, 240), ntypes: int = 1,
                 activation: str = "tanh", resnet: bool = True, type_input: bool = True) -> None:
        super().__init__()
        if ntypes < 1:
            raise ValueError(f"FittingHead needs ntypes >= 1, got {ntypes}")
        self.dim_in = int(dim_in)
        self.ntypes = int(ntypes)
        self.neurons = [int(n) for n in neurons]
        self.activation = activation
        self.resnet = bool(resnet)
        self.type_input = bool(type_input)
        self.net = ResMLP(self.dim_in + (self.ntypes if self.type_input else 0), self.neurons, 1,
                          activation, resnet)
        self.register_buffer("element_energy", torch.zeros(self.ntypes))
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("input_mean", torch.zeros(self.ntypes, self.dim_in))
        self.register_buffer("input_std", torch.ones(self.ntypes, self.dim_in))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # weights saved before the input normalisation existed load as the identity normalisation
        for name in ("input_mean", "input_std"):
            if prefix + name not in state_dict and prefix + "element_energy" in state_dict:
                state_dict[prefix + name] = getattr(self, name).detach().clone()
                state_dict[prefix + name].fill_(0.0 if name == "input_mean" else 1.0)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments (JSON-serialisable), enough to rebuild an identically shaped head."""
        return {"dim_in": self.dim_in, "neurons": list(self.neurons), "ntypes": self.ntypes,
                "activation": self.activation, "resnet": self.resnet, "type_input": self.type_input}

    def network(self, features: Tensor, types: Tensor) -> Tensor:
        """Raw network output (M,) for features (M, dim_in) and type indices (M,), before scale/reference."""
        features = (features - self.input_mean.to(features.dtype)[types]) / self.input_std.to(features.dtype)[types]
        if self.type_input:
            onehot = nn.functional.one_hot(types, self.ntypes).to(features.dtype)
            features = torch.cat([features, onehot], dim=-1)
        return self.net(features).squeeze(-1)

    def forward(self, features: Tensor, types: Tensor, isolated: Tensor | None = None) -> Tensor:
        """Atomic energies (M,).

        Args:
            features: (M, dim_in) descriptor features.
            types: (M,) int64 type indices.
            isolated: optional (ntypes, dim_in) descriptor features of isolated atoms of each type; when given
                the network output is measured from that of the isolated atom, so an atom without neighbours
                gets exactly ``element_energy[type]``.
        """
        if isolated is None:
            out = self.network(features, types)
        else:  # one pass of the net over the atoms and the isolated references (fewer, larger matmuls)
            n = features.shape[0]
            ref_types = torch.arange(self.ntypes, device=types.device)
            both = self.network(torch.cat([features, isolated]), torch.cat([types, ref_types]))
            out = both[:n] - both[n:][types]
        return self.element_energy.to(out.dtype)[types] + self.scale.to(out.dtype) * out
