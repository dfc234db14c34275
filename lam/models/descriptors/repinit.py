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

    def forward(self, env: Tensor, type_j: Tensor, type_i: Tensor, tebd_table: Tensor,
                scatter) -> Tensor:
        """``env`` (M, 4) of the kept edges, ``type_j``/``type_i`` (M,); ``scatter`` maps (M, F) to the
        padded (N, nnei, F) layout. Returns (N, dim_out)."""
        s = env[:, :1]
        if _needs_input_for_skip(self.net):
            x0 = torch.cat([s, tebd_table[type_j], tebd_table[type_i]], dim=-1)
            gg = self.net(x0)
        else:
            w_s, t_a, t_b = _split_first_layer(self.net, tebd_table, 1)
            pre = s * w_s + t_a[type_j] + t_b[type_i]
            gg = _rest_of_net(self.net, pre, None)
        # (N, 4, ng) = R^T G / sel, via the padded layout and one batched matmul
        g_dense = scatter(gg)
        r_dense = scatter(env)
        xyz = torch.bmm(r_dense.transpose(1, 2), g_dense) / self.sel
        d = torch.bmm(xyz.transpose(1, 2), xyz[:, :, : self.axis_neuron])
        return d.reshape(d.shape[0], -1)


class RepinitThreeBody(nn.Module):
    """Three-body (se_t_tebd-like) block on its own cutoff; output (N, neuron[-1])."""

    def __init__(self, tebd_dim: int, neuron: list[int], sel: int) -> None:
        super().__init__()
        self.net = EmbeddingNet(1 + 2 * tebd_dim, list(neuron))
        self.sel = sel
        self.dim_out = neuron[-1]

    def forward(self, env_dense: Tensor, type_dense: Tensor, tebd_table: Tensor) -> Tensor:
        """``env_dense`` (N, n, 4) zero-padded, ``type_dense`` (N, n) neighbour types. Returns (N, dim_out)."""
        a = env_dense[..., 1:]
        e = torch.bmm(a, a.transpose(1, 2))  # (N, n, n)
        if _needs_input_for_skip(self.net):
            n = e.shape[1]
            t = tebd_table[type_dense]
            x0 = torch.cat([e.unsqueeze(-1), t.unsqueeze(2).expand(-1, -1, n, -1),
                            t.unsqueeze(1).expand(-1, n, -1, -1)], dim=-1)
            gg = self.net(x0)
        else:
            w_s, t_a, t_b = _split_first_layer(self.net, tebd_table, 1)
            pre = e.unsqueeze(-1) * w_s + t_a[type_dense].unsqueeze(2) + t_b[type_dense].unsqueeze(1)
            gg = _rest_of_net(self.net, pre, None)
        res = (gg * e.unsqueeze(-1)).sum(dim=(1, 2))
        return res / float(self.sel * self.sel)
