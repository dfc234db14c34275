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

from lam.models.descriptors.common import EmbeddingNet


def _split_first_layer(net: EmbeddingNet, tebd_table: Tensor, n_scalar: int) -> tuple[Tensor, Tensor, Tensor]:
    """Split the first layer of ``net`` (input ``[scalars, t_a, t_b]``) into a scalar weight and two
    per-type bias tables. Returns ``(w_scalar (n_scalar, H), table_a (ntypes, H), table_b (ntypes, H))``;
    the bias is folded into ``table_a``."""
    layer = net.layers[0]
    dim = tebd_table.shape[1]
    w = layer.weight
    w_s = w[:, :n_scalar].t()
    table_a = tebd_table @ w[:, n_scalar : n_scalar + dim].t() + layer.bias
    table_b = tebd_table @ w[:, n_scalar + dim : n_scalar + 2 * dim].t()
    return w_s, table_a, table_b


def _rest_of_net(net: EmbeddingNet, first_pre: Tensor, first_in: Tensor | None) -> Tensor:
    """Finish the embedding net given the first layer's pre-activation."""
    x = net.apply_layer(0, first_in if first_in is not None else first_pre, first_pre)
    for i in range(1, len(net.layers)):
        x = net.apply_layer(i, x, net.layers[i](x))
    return x


def _needs_input_for_skip(net: EmbeddingNet) -> bool:
    layer = net.layers[0]
    return layer.out_features in (layer.in_features, 2 * layer.in_features)


class RepinitTwoBody(nn.Module):
    """Two-body repinit block; output (N, neuron[-1] * axis_neuron)."""

    def __init__(self, tebd_dim: int, neuron: list[int], axis_neuron: int, sel: int) -> None:
        super().__init__()
        if axis_neuron > neuron[-1]:
            raise ValueError(f"repinit axis_neuron {axis_neuron} > last embedding width {neuron[-1]}")
        self.net = EmbeddingNet(1 + 2 * tebd_dim, list(neuron))
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
        if _needs_input_for_skip(self.net):
            n = env_dense.shape[1]
            t_i = tebd_table[types].unsqueeze(1).expand(-1, n, -1)
            gg = self.net(torch.cat([s, tebd_table[type_dense], t_i], dim=-1))
        else:
            w_s, t_a, t_b = _split_first_layer(self.net, tebd_table, 1)
            pre = torch.addcmul(t_a[type_dense] + t_b[types].unsqueeze(1), s, w_s)
            gg = _rest_of_net(self.net, pre, None)
        xyz = torch.bmm(env_dense.transpose(1, 2), gg) / self.sel  # (N, 4, ng) = R^T G / sel
        d = torch.bmm(xyz.transpose(1, 2), xyz[:, :, : self.axis_neuron])
        return d.reshape(d.shape[0], -1)


class RepinitThreeBody(nn.Module):
    """Three-body (se_t_tebd-like) block on its own cutoff; output (N, neuron[-1])."""

    def __init__(self, tebd_dim: int, neuron: list[int], sel: int) -> None:
        super().__init__()
        self.net = EmbeddingNet(1 + 2 * tebd_dim, list(neuron))
        if _needs_input_for_skip(self.net):
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
        atom, j, k = torch.nonzero(mask.unsqueeze(2) & mask.unsqueeze(1), as_tuple=True)
        e = e_dense[atom, j, k]  # (T,)
        nt = tebd_table.shape[0]
        first = self.net.layers[0]
        dim = tebd_table.shape[1]
        # channel-first (C, T) layout: the widths are tiny and T is long, so every op streams along T
        w = first.weight
        table = (tebd_table @ w[:, 1 : 1 + dim].t() + first.bias).unsqueeze(1) \
            + (tebd_table @ w[:, 1 + dim : 1 + 2 * dim].t()).unsqueeze(0)  # (nt, nt, H)
        ptype = type_dense[atom, j] * nt + type_dense[atom, k]
        x = torch.addcmul(table.reshape(nt * nt, -1).t()[:, ptype], w[:, :1], e.unsqueeze(0))
        x = self._activate(0, x, x)
        for i in range(1, len(self.net.layers)):
            layer = self.net.layers[i]
            x = self._activate(i, x, torch.addmm(layer.bias.unsqueeze(1), layer.weight, x))
        res = x.new_zeros(x.shape[0], n_atoms).index_add(1, atom, x * e.unsqueeze(0))
        return res.t() / float(self.sel * self.sel)

    def _activate(self, i: int, x: Tensor, pre: Tensor) -> Tensor:
        """tanh plus DeePMD's skip in the channel-first layout."""
        y = torch.tanh(pre)
        n_in, n_out = self.net.layers[i].in_features, self.net.layers[i].out_features
        if n_out == n_in:
            y = y + x
        elif n_out == 2 * n_in:
            y = y + torch.cat([x, x], dim=0)
        return y
