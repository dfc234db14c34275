"""Direct (non-conservative) force heads, rotation-equivariant by construction.

A direct head costs one descriptor pass and no backward pass: the fast inner force of multiple time stepping
(r-RESPA), corrected by the conservative ``-dE/dr`` at the outer steps, so the closer it follows ``-dE/dr``
the more stable the integration. Two readouts of the invariant descriptor features ``g`` (``kind``):

``"edge"`` (default) predicts, for every directed edge ``i → j``, the vector ``e_ij`` that plays the role of
``∂E/∂r_ij`` and assembles the forces the way the gradient of an energy of edge vectors is assembled::

    F_i = Σ_j e_ij − Σ_k e_ki,     e_ij = sw(r_ij) [a_ij r̂_ij + Σ_c b_ij,c V_i,c + Σ_c c_ij,c V_j,c]
    V_i,c = Σ_j sw(r_ij) w_ij,c r̂_ij / n_norm        (per-atom equivariant vectors)

with invariant coefficients ``a, b, c, w`` from an MLP of ``(g_i, g_j, radial basis of r_ij)``. The
gradient of a many-body energy has components perpendicular to ``r_ij`` (angular terms); the vectors
``V`` supply them. The antisymmetric assembly makes the net force exactly zero (Newton's third law, total
momentum conserved) and every term is smooth at the cutoff.

``"pair"`` (the first version, kept so that models saved with it still load):
``F_i = scale * Σ_j w(g_i, g_j, r_ij) sw(r_ij) r_ij / |r_ij|``: forces along the pair directions only.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from lam.models.descriptors.se_e2_a import smooth_switch
from lam.models.heads import make_activation

DIRECT_FORCE_KINDS = ("edge", "pair")


class DirectForceHead(nn.Module):
    """Equivariant force readout of descriptor features (see the module docstring).

    Args:
        dim_in: descriptor feature size.
        rcut: cutoff of the pair sums (Å); edges beyond it are ignored.
        rcut_smth: start of the smooth switching (Å).
        hidden: width of the edge MLP.
        num_basis: number of radial (sine) basis functions.
        activation: activation of the edge MLP.
        kind: ``"edge"`` (edge vectors with per-atom vector features) or ``"pair"`` (pair directions only).
        vectors: number of per-atom vector channels ``V`` (``kind="edge"``).
        neighbour_norm: divisor of the sum that forms ``V`` (about the typical neighbour count).
    """

    def __init__(self, dim_in: int, rcut: float = 5.0, rcut_smth: float = 0.5, hidden: int = 64,
                 num_basis: int = 8, activation: str = "silu", kind: str = "edge", vectors: int = 8,
                 neighbour_norm: float = 16.0) -> None:
        super().__init__()
        if kind not in DIRECT_FORCE_KINDS:
            raise ValueError(f"DirectForceHead: kind must be one of {DIRECT_FORCE_KINDS}, got {kind!r}")
        if not 0.0 <= rcut_smth < rcut:
            raise ValueError(f"DirectForceHead: need 0 <= rcut_smth < rcut, got {rcut_smth}, {rcut}")
        self.dim_in = int(dim_in)
        self.rcut = float(rcut)
        self.rcut_smth = float(rcut_smth)
        self.hidden = int(hidden)
        self.num_basis = int(num_basis)
        self.activation = activation
        self.kind = kind
        self.vectors = int(vectors)
        self.neighbour_norm = float(neighbour_norm)
        self.centre = nn.Linear(self.dim_in, self.hidden)
        self.neighbour = nn.Linear(self.dim_in, self.hidden, bias=False)
        self.radial = nn.Linear(self.num_basis, self.hidden, bias=False)
        if kind == "pair":
            self.mlp = nn.Sequential(make_activation(activation), nn.Linear(self.hidden, self.hidden),
                                     make_activation(activation), nn.Linear(self.hidden, 1))
        else:
            self.trunk = nn.Sequential(make_activation(activation), nn.Linear(self.hidden, self.hidden),
                                       make_activation(activation))
            self.vector_weights = nn.Linear(self.hidden, self.vectors)  # w_ij,c
            self.edge_out = nn.Linear(self.hidden, 1 + 2 * self.vectors)  # a_ij, b_ij,c, c_ij,c
        self.register_buffer("scale", torch.ones(()))

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments."""
        return {"dim_in": self.dim_in, "rcut": self.rcut, "rcut_smth": self.rcut_smth, "hidden": self.hidden,
                "num_basis": self.num_basis, "activation": self.activation, "kind": self.kind,
                "vectors": self.vectors, "neighbour_norm": self.neighbour_norm}

    def forward(self, features: Tensor, edge_index: Tensor, edge_vec: Tensor) -> Tensor:
        """Forces (N, 3) from features (N, dim_in), edges (2, E) and edge vectors r_ij (E, 3)."""
        r = edge_vec.norm(dim=-1)
        keep = r < self.rcut
        i, j = edge_index[0][keep], edge_index[1][keep]
        r, vec = r[keep], edge_vec[keep]
        n = torch.arange(1, self.num_basis + 1, device=r.device, dtype=r.dtype)
        basis = torch.sin(n * (math.pi / self.rcut) * r.unsqueeze(-1)) / r.unsqueeze(-1)
        h = self.centre(features)[i] + self.neighbour(features)[j] + self.radial(basis)
        sw = smooth_switch(r, self.rcut_smth, self.rcut)
        n_atoms = features.shape[0]
        if self.kind == "pair":
            w = self.mlp(h).squeeze(-1) * sw / r
            forces = features.new_zeros(n_atoms, 3).index_add(0, i, w.unsqueeze(-1) * vec)
            return self.scale.to(forces.dtype) * forces
        z = self.trunk(h)
        unit = vec / r.unsqueeze(-1)
        w = self.vector_weights(z) * (sw / self.neighbour_norm).unsqueeze(-1)  # (E, C)
        v = features.new_zeros(n_atoms, self.vectors, 3).index_add(0, i, w.unsqueeze(-1) * unit.unsqueeze(1))
        out = self.edge_out(z)
        a, b, c = out[:, :1], out[:, 1:1 + self.vectors], out[:, 1 + self.vectors:]
        e = a * unit + torch.einsum("ec,ecx->ex", b, v[i]) + torch.einsum("ec,ecx->ex", c, v[j])
        e = e * sw.unsqueeze(-1)
        forces = features.new_zeros(n_atoms, 3).index_add(0, i, e).index_add(0, j, -e)
        return self.scale.to(forces.dtype) * forces
