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

``"energy"`` predicts a cheap local energy of the geometry *at fixed features* and returns its exact
gradient with respect to the positions, with the features held constant::

    E_f(r; g) = Σ_ij sw(r_ij) a_ij + Σ_i u(g_i, Gram(V_i)),     F_i = -∂E_f/∂r_i   (g fixed)

with ``a_ij``, ``V_i`` as above and ``u`` an MLP of the per-atom Gram matrix ``V_i V_iᵀ`` (the three-body,
angular invariants) and the features. It is still a direct force (the gradient does not pass through the
descriptor), but with the features *frozen* it is the gradient of a potential: :func:`lam.md.run.run_md`
with ``inner="frozen"`` takes the features from a conservative evaluation, refreshes them every
``refresh_every`` outer r-RESPA steps and integrates the inner steps with this head alone, so between
refreshes the inner dynamics are Hamiltonian (no curl to heat the system) and cost a small fraction of a
descriptor pass.

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

DIRECT_FORCE_KINDS = ("edge", "pair", "energy")


class DirectForceHead(nn.Module):
    """Equivariant force readout of descriptor features (see the module docstring).

    Args:
        dim_in: descriptor feature size.
        rcut: cutoff of the pair sums (Å); edges beyond it are ignored.
        rcut_smth: start of the smooth switching (Å).
        hidden: width of the edge MLP.
        num_basis: number of radial (sine) basis functions.
        activation: activation of the edge MLP.
        kind: ``"edge"`` (edge vectors with per-atom vector features), ``"energy"`` (gradient of a local
            energy at fixed features) or ``"pair"`` (pair directions only).
        vectors: number of per-atom vector channels ``V`` (``kind="edge"`` and ``"energy"``).
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
            if kind == "edge":
                self.edge_out = nn.Linear(self.hidden, 1 + 2 * self.vectors)  # a_ij, b_ij,c, c_ij,c
            else:
                self.pair_energy = nn.Linear(self.hidden, 1)  # a_ij
                self.gram_in = nn.Linear(self.vectors * self.vectors, self.hidden)
                self.atom_in = nn.Linear(self.dim_in, self.hidden, bias=False)
                self.atom_mlp = nn.Sequential(make_activation(activation), nn.Linear(self.hidden, self.hidden),
                                              make_activation(activation), nn.Linear(self.hidden, 1))
        self.register_buffer("scale", torch.ones(()))

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments."""
        return {"dim_in": self.dim_in, "rcut": self.rcut, "rcut_smth": self.rcut_smth, "hidden": self.hidden,
                "num_basis": self.num_basis, "activation": self.activation, "kind": self.kind,
                "vectors": self.vectors, "neighbour_norm": self.neighbour_norm}

    @property
    def is_gradient(self) -> bool:
        """Whether the forces are the gradient of a local energy at fixed features (``kind="energy"``)."""
        return self.kind == "energy"

    def _edge_inputs(self, features: Tensor, edge_index: Tensor, edge_vec: Tensor
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Edges within ``rcut``: ends ``i, j``, length, vector, pre-activation ``h_ij`` and switch."""
        r = edge_vec.norm(dim=-1)
        keep = r < self.rcut
        i, j = edge_index[0][keep], edge_index[1][keep]
        r, vec = r[keep], edge_vec[keep]
        n = torch.arange(1, self.num_basis + 1, device=r.device, dtype=r.dtype)
        basis = torch.sin(n * (math.pi / self.rcut) * r.unsqueeze(-1)) / r.unsqueeze(-1)
        h = self.centre(features)[i] + self.neighbour(features)[j] + self.radial(basis)
        return i, j, r, vec, h, smooth_switch(r, self.rcut_smth, self.rcut)

    def _vectors(self, z: Tensor, i: Tensor, r: Tensor, vec: Tensor, sw: Tensor, n_atoms: int
                 ) -> tuple[Tensor, Tensor]:
        """Unit edge vectors (E, 3) and per-atom vector features ``V_i,c = Σ_j sw w_ij,c r̂_ij / n_norm``."""
        unit = vec / r.unsqueeze(-1)
        w = self.vector_weights(z) * (sw / self.neighbour_norm).unsqueeze(-1)  # (E, C)
        v = z.new_zeros(n_atoms, self.vectors, 3).index_add(0, i, w.unsqueeze(-1) * unit.unsqueeze(1))
        return unit, v

    def forward(self, features: Tensor, edge_index: Tensor, edge_vec: Tensor) -> Tensor:
        """Forces (N, 3) from features (N, dim_in), edges (2, E) and edge vectors r_ij (E, 3)."""
        if self.kind == "energy":
            return self._gradient_forces(features, edge_index, edge_vec)
        i, j, r, vec, h, sw = self._edge_inputs(features, edge_index, edge_vec)
        n_atoms = features.shape[0]
        if self.kind == "pair":
            w = self.mlp(h).squeeze(-1) * sw / r
            forces = features.new_zeros(n_atoms, 3).index_add(0, i, w.unsqueeze(-1) * vec)
            return self.scale.to(forces.dtype) * forces
        z = self.trunk(h)
        unit, v = self._vectors(z, i, r, vec, sw, n_atoms)
        out = self.edge_out(z)
        a, b, c = out[:, :1], out[:, 1:1 + self.vectors], out[:, 1 + self.vectors:]
        e = a * unit + torch.einsum("ec,ecx->ex", b, v[i]) + torch.einsum("ec,ecx->ex", c, v[j])
        e = e * sw.unsqueeze(-1)
        forces = features.new_zeros(n_atoms, 3).index_add(0, i, e).index_add(0, j, -e)
        return self.scale.to(forces.dtype) * forces

    def local_energy(self, features: Tensor, edge_index: Tensor, edge_vec: Tensor) -> Tensor:
        """``kind="energy"``: the head's energy ``E_f`` (a scalar, summed over all atoms) of the geometry."""
        if self.kind != "energy":
            raise ValueError(f"local_energy needs kind='energy', this head is {self.kind!r}")
        i, _, r, vec, h, sw = self._edge_inputs(features, edge_index, edge_vec)
        z = self.trunk(h)
        n_atoms = features.shape[0]
        _, v = self._vectors(z, i, r, vec, sw, n_atoms)
        gram = torch.einsum("ncx,ndx->ncd", v, v).reshape(n_atoms, -1)
        atom = self.atom_mlp(self.gram_in(gram) + self.atom_in(features)).squeeze(-1)
        pair = self.pair_energy(z).squeeze(-1) * sw
        return self.scale.to(pair.dtype) * (pair.sum() + atom.sum())

    def _gradient_forces(self, features: Tensor, edge_index: Tensor, edge_vec: Tensor) -> Tensor:
        """``-∂E_f/∂r`` at fixed ``features`` (the gradient does not reach the descriptor).

        The graph of the forces is kept in training mode (so that a loss on them reaches the head's weights
        and, through ``features``, the descriptor's); elsewhere the forces are plain tensors.
        """
        with torch.enable_grad():
            vec = edge_vec.detach().requires_grad_(True)
            energy = self.local_energy(features, edge_index, vec)
            (d_vec,) = torch.autograd.grad(energy, vec, create_graph=self.training)
        # r_ij = r_j - r_i: dE/dr_i = -Σ_(i->j) dE/dr_ij + Σ_(k->i) dE/dr_ki, and F = -dE/dr
        n_atoms = features.shape[0]
        forces = d_vec.new_zeros(n_atoms, 3).index_add(0, edge_index[0], d_vec).index_add(0, edge_index[1], -d_vec)
        return forces
