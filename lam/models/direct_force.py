"""Direct (non-conservative) force head, rotation-equivariant by construction.

``F_i = scale * sum_j w(g_i, g_j, r_ij) * sw(r_ij) * r_ij / |r_ij|`` where ``g`` are the invariant descriptor
features and ``w`` a scalar MLP of invariants, so rotating the structure rotates the forces. It costs one
descriptor pass and no backward pass: the fast inner force of multiple time stepping (r-RESPA), corrected by
the conservative ``-dE/dr`` at the outer steps.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from lam.models.descriptors.se_e2_a import smooth_switch
from lam.models.heads import make_activation


class DirectForceHead(nn.Module):
    """Pairwise equivariant force readout.

    Args:
        dim_in: descriptor feature size.
        rcut: cutoff of the pair sum (Å); edges beyond it are ignored.
        rcut_smth: start of the smooth switching (Å).
        hidden: width of the edge MLP.
        num_basis: number of radial (sine) basis functions.
        activation: activation of the edge MLP.
    """

    def __init__(self, dim_in: int, rcut: float = 5.0, rcut_smth: float = 0.5, hidden: int = 64,
                 num_basis: int = 8, activation: str = "silu") -> None:
        super().__init__()
        self.dim_in = int(dim_in)
        self.rcut = float(rcut)
        self.rcut_smth = float(rcut_smth)
        self.hidden = int(hidden)
        self.num_basis = int(num_basis)
        self.activation = activation
        self.centre = nn.Linear(self.dim_in, self.hidden)
        self.neighbour = nn.Linear(self.dim_in, self.hidden, bias=False)
        self.radial = nn.Linear(self.num_basis, self.hidden, bias=False)
        self.mlp = nn.Sequential(make_activation(activation), nn.Linear(self.hidden, self.hidden),
                                 make_activation(activation), nn.Linear(self.hidden, 1))
        self.register_buffer("scale", torch.ones(()))

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments."""
        return {"dim_in": self.dim_in, "rcut": self.rcut, "rcut_smth": self.rcut_smth, "hidden": self.hidden,
                "num_basis": self.num_basis, "activation": self.activation}

    def forward(self, features: Tensor, edge_index: Tensor, edge_vec: Tensor) -> Tensor:
        """Forces (N, 3) from features (N, dim_in), edges (2, E) and edge vectors r_ij (E, 3)."""
        r = edge_vec.norm(dim=-1)
        keep = r < self.rcut
        i, j = edge_index[0][keep], edge_index[1][keep]
        r, vec = r[keep], edge_vec[keep]
        n = torch.arange(1, self.num_basis + 1, device=r.device, dtype=r.dtype)
        basis = torch.sin(n * (math.pi / self.rcut) * r.unsqueeze(-1)) / r.unsqueeze(-1)
        h = self.centre(features)[i] + self.neighbour(features)[j] + self.radial(basis)
        w = self.mlp(h).squeeze(-1) * smooth_switch(r, self.rcut_smth, self.rcut) / r
        forces = features.new_zeros(features.shape[0], 3).index_add(0, i, w.unsqueeze(-1) * vec)
        return self.scale.to(forces.dtype) * forces
