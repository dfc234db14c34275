"""DPA-2 ``repinit``: the type-embedded two-body block and the optional three-body block.

Two-body (DeePMD-kit's se_atten with no attention layer, type embedding concatenated): every neighbour ``j``
of ``i`` gets an embedding ``G_ij = MLP([s(r_ij), t_j, t_i])``; with the smooth environment matrix
``R_ij = s(r)[1, x/r, y/r, z/r]`` the atom descriptor is ``D_i = (G^T R / sel)(R^T G_< / sel)``, where
``G_<`` is the first ``axis_neuron`` columns of ``G``, flattened to ``neuron[-1] * axis_neuron`` features.

Three-body (DeePMD-kit's se_t_tebd): for every pair of neighbours ``(j, k)`` of ``i`` the angular invariant
``e_jk = R'_ij . R'_ik`` (``R'`` the last three columns of ``R``) is embedded together with ``t_j, t_k``,
and ``D3_i = sum_jk e_jk MLP([e_jk, t_j, t_k]) / sel^2``.

The first layer of each embedding is applied as ``s * w_s + (W_t t)[type_j] + (W_t' t)[type_i] + b``, a
per-type lookup instead of a concatenation, which is exact and saves most of its cost.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lam.models.descriptors.common import EmbeddingNet, apply_skip


class RepinitTwoBody(nn.Module):
    """Two-body repinit block; output (N, neuron[-1] * axis_neuron)."""

    def __init__(self, tebd_dim: int, neuron: list[int], axis_neuron: int, sel: int) -> None:
        super().__init__()
        if axis_neuron > neuron[-1]:
            raise ValueError(f"repinit axis_neuron {axis_neuron} > last embedding width {neuron[-1]}")
        self.net = EmbeddingNet(1 + 2 * tebd_dim, list(neuron))
        self.first_skip = self.net.skips[0] != 0  # the first layer's skip needs the concatenated input
        self.tebd_dim = tebd_dim
        self.axis_neuron = axis_neuron
        self.sel = sel
        self.dim_out = neuron[-1] * axis_neuron

    def forward(self, env_dense: Tensor, type_dense: Tensor, types: Tensor, tebd_table: Tensor) -> Tensor:
        """``env_dense`` (N, n, 4) zero-padded environment matrix, ``type_dense`` (N, n) neighbour types,
        ``types`` (N,) centre types. Returns (N, dim_out).

        The embedding runs on the padded layout: empty slots have ``R = 0`` and so contribute nothing
        (and receive no gradient), which is cheaper than scattering per-edge embeddings into it.
        """
        s = env_dense[..., :1]
        if self.first_skip:
            n = env_dense.shape[1]
            t_i = tebd_table[types].unsqueeze(1).expand(-1, n, -1)
            gg = self.net(torch.cat([s, tebd_table[type_dense], t_i], dim=-1))
        else:
            # first layer on [s, t_j, t_i] as s * w_s + (W_t t)[type_j] + (W_t' t)[type_i] + b: per-type lookups
            gg = s  # replaced in the first iteration
            dim = self.tebd_dim
            for i, layer in enumerate(self.net.layers):
                if i == 0:
                    w = layer.weight
                    t_a = tebd_table @ w[:, 1 : 1 + dim].t() + layer.bias
                    t_b = tebd_table @ w[:, 1 + dim : 1 + 2 * dim].t()
                    pre = torch.addcmul(t_a[type_dense] + t_b[types].unsqueeze(1), s, w[:, :1].t())
                    gg = apply_skip(self.net.skips[0], pre, pre)
                else:
                    gg = apply_skip(self.net.skips[i], gg, layer(gg))
        xyz = torch.bmm(env_dense.transpose(1, 2), gg) / self.sel  # (N, 4, ng) = R^T G / sel
        d = torch.bmm(xyz.transpose(1, 2), xyz[:, :, : self.axis_neuron])
        return d.reshape(d.shape[0], -1)


class RepinitThreeBody(nn.Module):
    """Three-body (se_t_tebd-like) block on its own cutoff; output (N, neuron[-1])."""

    def __init__(self, tebd_dim: int, neuron: list[int], sel: int) -> None:
        super().__init__()
        self.net = EmbeddingNet(1 + 2 * tebd_dim, list(neuron))
        if self.net.skips[0] != 0:
            raise ValueError(f"three-body neuron[0]={neuron[0]} must differ from the input width "
                             f"{1 + 2 * tebd_dim} and twice it (no skip on the first layer)")
        self.sel = sel
        self.dim_out = neuron[-1]

    def forward(self, env_dense: Tensor, type_dense: Tensor, mask: Tensor, tebd_table: Tensor) -> Tensor:
        """``env_dense`` (N, n, 4) zero-padded, ``type_dense`` (N, n) neighbour types, ``mask`` (N, n) real
        slots. Returns (N, dim_out).

        The embedding only runs on the pairs ``(j, k)`` of real neighbours (a flat list of
        ``sum_i n_i^2`` rows rather than ``N n^2`` padded ones).
        """
        n_atoms, nnei, _ = env_dense.shape
        a = env_dense[..., 1:]
        e_dense = torch.bmm(a, a.transpose(1, 2))  # (N, n, n)
        nz = torch.nonzero(mask.unsqueeze(2) & mask.unsqueeze(1))
        atom, j, k = nz[:, 0], nz[:, 1], nz[:, 2]
        e = e_dense[atom, j, k]  # (T,)
        nt = tebd_table.shape[0]
        dim = tebd_table.shape[1]
        # channel-first (C, T) layout: the widths are tiny and T is long, so every op streams along T
        x = e.unsqueeze(0)  # replaced in the first iteration
        for i, layer in enumerate(self.net.layers):
            if i == 0:
                w = layer.weight
                table = (tebd_table @ w[:, 1 : 1 + dim].t() + layer.bias).unsqueeze(1) \
                    + (tebd_table @ w[:, 1 + dim : 1 + 2 * dim].t()).unsqueeze(0)  # (nt, nt, H)
                ptype = type_dense[atom, j] * nt + type_dense[atom, k]
                x = torch.addcmul(table.reshape(nt * nt, -1).t()[:, ptype], w[:, :1], e.unsqueeze(0))
                x = _activate_channels(self.net.skips[0], x, x)
            else:
                x = _activate_channels(self.net.skips[i], x, torch.addmm(layer.bias.unsqueeze(1), layer.weight, x))
        res = x.new_zeros(x.shape[0], n_atoms).index_add(1, atom, x * e.unsqueeze(0))
        return res.t() / float(self.sel * self.sel)


def _activate_channels(kind: int, x: Tensor, pre: Tensor) -> Tensor:
    """tanh plus DeePMD's skip in the channel-first (C, T) layout of the three-body block."""
    y = torch.tanh(pre)
    if kind == 1:
        y = y + x
    elif kind == 2:
        y = y + torch.cat([x, x], dim=0)
    return y
