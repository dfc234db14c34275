"""DeepPot-SE ``se_e2_a`` descriptor: the compact, fast student.

For every atom ``i`` the smooth environment matrix ``R_i`` (nnei, 4) has one row per neighbour ``j``,
``s(r) * [1, x/r, y/r, z/r]`` with ``s(r) = sw(r) / r``, where ``sw`` switches smoothly (C2) from 1 at
``rcut_smth`` to 0 at ``rcut``. An embedding net maps ``s`` of each neighbour (and the (centre, neighbour) type
pair) to ``G_ij`` (M,). With ``T_i = R_i^T G_i / sel`` (4, M) the descriptor is ``D_i = T_i^T T_i[:, :axis]``
(M x axis), invariant to rotations, translations and permutations of neighbours.

Built for speed: the embedding net runs once per edge, the first layer depends on the type pair through a
gathered weight/bias table (one net for all pairs, no loop over types), and the contraction runs as batched
matmuls on neighbours padded per atom, ``(N, nnei)``, taken straight from the centre-sorted edge list.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lam.models.heads import make_activation


def smooth_switch(r: Tensor, rcut_smth: float, rcut: float) -> Tensor:
    """DeePMD's C2 switching function: 1 for ``r < rcut_smth``, 0 for ``r >= rcut``, quintic in between."""
    u = ((r - rcut_smth) / (rcut - rcut_smth)).clamp(0.0, 1.0)
    return u * u * u * (-6.0 * u * u + 15.0 * u - 10.0) + 1.0


def padded_slots(centre: Tensor, n_atoms: int) -> tuple[Tensor, int]:
    """Slot of every edge in its centre's padded neighbour row, and the row length (max neighbour count).

    ``centre`` must be sorted (the edge-list contract).
    """
    counts = torch.bincount(centre, minlength=n_atoms)
    if centre.numel() == 0:
        return centre.clone(), 0
    offsets = torch.cumsum(counts, 0) - counts
    slot = torch.arange(centre.numel(), device=centre.device) - offsets[centre]
    return slot, int(counts.max().item())


class SeE2A(nn.Module):
    """DeepPot-SE two-body embedding descriptor with full (x, y, z) angular information.

    Args:
        ntypes: number of element types.
        rcut: cutoff radius (Å).
        rcut_smth: radius where the smooth switching starts (Å).
        neurons: embedding net widths, e.g. ``[16, 32, 64]``; the last one is ``M``.
        axis_neuron: number of embedding columns kept as the second axis of ``D`` (``dim_out = M * axis``).
        sel: typical largest neighbour count; only a fixed normalisation constant (never truncates).
        activation: embedding activation (``"tanh"`` as DeePMD).
        env_std: scale applied to ``s(r)`` before the embedding net and to the environment matrix.
    """

    __jit_unused_properties__ = ["cutoffs", "config"]

    def __init__(self, ntypes: int, rcut: float = 5.0, rcut_smth: float = 0.5,
                 neurons: Sequence[int] = (16, 32, 64), axis_neuron: int = 8, sel: int = 64,
                 activation: str = "tanh", env_std: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= rcut_smth < rcut:
            raise ValueError(f"SeE2A needs 0 <= rcut_smth < rcut, got rcut_smth={rcut_smth}, rcut={rcut}")
        neurons = [int(n) for n in neurons]
        if axis_neuron > neurons[-1]:
            raise ValueError(f"axis_neuron={axis_neuron} exceeds the embedding width {neurons[-1]}")
        self.ntypes = int(ntypes)
        self.rcut = float(rcut)
        self.rcut_smth = float(rcut_smth)
        self.neurons = neurons
        self.axis_neuron = int(axis_neuron)
        self.sel = int(sel)
        self.activation = activation
        self.env_std = float(env_std)
        self.dim_out = neurons[-1] * self.axis_neuron
        npair = self.ntypes * self.ntypes
        # First layer per (centre type, neighbour type) pair: h = act(s * w[p] + b[p]).
        self.first_weight = nn.Parameter(torch.randn(npair, neurons[0]))
        self.first_bias = nn.Parameter(torch.randn(npair, neurons[0]) * 0.1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(neurons[:-1], neurons[1:]))
        self.act = make_activation(activation)

    @property
    def cutoffs(self) -> list[float]:
        """All cutoffs the descriptor reads (one)."""
        return [self.rcut]

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments, enough to rebuild the descriptor."""
        return {"ntypes": self.ntypes, "rcut": self.rcut, "rcut_smth": self.rcut_smth,
                "neurons": list(self.neurons), "axis_neuron": self.axis_neuron, "sel": self.sel,
                "activation": self.activation, "env_std": self.env_std}

    def embedding(self, s: Tensor, pair: Tensor) -> Tensor:
        """Embedding net G (E, M) of the scaled radial value ``s`` (E,) for type-pair indices ``pair`` (E,)."""
        x = self.act(s.unsqueeze(-1) * self.first_weight[pair] + self.first_bias[pair])
        for layer in self.layers:
            y = self.act(layer(x))
            if y.shape[-1] == x.shape[-1]:
                x = x + y
            elif y.shape[-1] == 2 * x.shape[-1]:
                x = y + torch.cat([x, x], dim=-1)
            else:
                x = y
        return x

    def forward(self, types: Tensor, edge_index: Tensor, edge_vec: Tensor) -> Tensor:
        """Per-atom descriptor (N, M * axis) from types (N,), centre-sorted edges (2, E) and r_ij (E, 3)."""
        n_atoms = types.shape[0]
        r2 = (edge_vec * edge_vec).sum(-1)
        keep = r2 < self.rcut * self.rcut
        if not bool(keep.all().item()):
            edge_index, edge_vec, r2 = edge_index[:, keep], edge_vec[keep], r2[keep]
        centre, neigh = edge_index[0], edge_index[1]
        r = torch.sqrt(r2)
        s = smooth_switch(r, self.rcut_smth, self.rcut) / r / self.env_std
        env = torch.cat([s.unsqueeze(-1), (s / r).unsqueeze(-1) * edge_vec], dim=-1)  # (E, 4)
        g = self.embedding(s, types[centre] * self.ntypes + types[neigh])  # (E, M)
        slot, nnei = padded_slots(centre, n_atoms)
        m = g.shape[-1]
        env_pad = env.new_zeros(n_atoms, nnei, 4).index_put((centre, slot), env)
        g_pad = g.new_zeros(n_atoms, nnei, m).index_put((centre, slot), g)
        t = torch.bmm(env_pad.transpose(1, 2), g_pad) / self.sel  # (N, 4, M)
        d = torch.bmm(t.transpose(1, 2), t[:, :, : self.axis_neuron])  # (N, M, axis)
        return d.reshape(n_atoms, self.dim_out)
