"""Building blocks shared by the DPA-2 descriptor blocks.

* :func:`smooth_switch` — DeePMD-kit's C2 switching polynomial and the smooth environment matrix
  ``R_ij = s(r) [1, x/r, y/r, z/r]`` with ``s(r) = sw(r) / r``.
* :class:`DenseNeighbors` — turns a centre-sorted edge list into a padded ``(N, nnei)`` layout whose width is
  the largest neighbour count *of this batch* (capped at ``sel``), keeping the nearest ``sel`` neighbours.
* :class:`EmbeddingNet` — DeePMD-style tanh MLP with identity / doubled skip connections.
* :class:`TypeEmbedding` — ``tanh(W[type])``, no bias (DeePMD-kit's ``TypeEmbedNet`` with one layer).
* :func:`padded_softmax` — softmax over a padded axis that behaves exactly as if the axis had ``sel``
  slots, the missing ones holding the logit ``fill``; keeps outputs independent of the batch's padding.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn


def smooth_switch(r: Tensor, rcut_smth: float, rcut: float) -> Tensor:
    """DeePMD-kit's switching function: 1 below ``rcut_smth``, 0 beyond ``rcut``, C2 in between.

    ``sw(u) = u^3 (-6 u^2 + 15 u - 10) + 1`` with ``u = (r - rcut_smth) / (rcut - rcut_smth)``.
    """
    u = ((r - rcut_smth) / (rcut - rcut_smth)).clamp(0.0, 1.0)
    return u * u * u * (-6.0 * u * u + 15.0 * u - 10.0) + 1.0


def env_matrix(vec: Tensor, rcut_smth: float, rcut: float) -> tuple[Tensor, Tensor]:
    """Smooth environment matrix of edge vectors (no zero-length edges allowed).

    Returns ``(env, sw)``: ``env`` (E, 4) = ``sw/r * [1, x/r, y/r, z/r]`` and ``sw`` (E,) the switch value.
    """
    r = torch.linalg.vector_norm(vec, dim=-1)
    sw = smooth_switch(r, rcut_smth, rcut)
    inv_r = 1.0 / r
    s = sw * inv_r
    env = torch.cat([s.unsqueeze(-1), vec * (s * inv_r).unsqueeze(-1)], dim=-1)
    return env, sw


class DenseNeighbors(NamedTuple):
    """Padded neighbour layout for one cutoff.

    Attributes:
        edge: (M,) indices into the caller's edge list of the kept edges (within cutoff, nearest ``sel``).
        slot: (M,) flat slot ``centre * nnei + rank`` of each kept edge in the (N * nnei) layout.
        index: (N, nnei) neighbour atom index per slot (0 in empty slots).
        mask: (N, nnei) bool, True where a slot holds a real neighbour.
        nnei: width of the layout, ``min(sel, largest neighbour count in this batch)`` (at least 1).
    """

    edge: Tensor
    slot: Tensor
    index: Tensor
    mask: Tensor
    nnei: int


def scatter_dense(nb: DenseNeighbors, values: Tensor, n_atoms: int) -> Tensor:
    """Place per-kept-edge ``values`` (M, *F) into a zero-padded (N, nnei, *F) tensor (differentiable)."""
    feature_shape = list(values.shape[1:])
    out = values.new_zeros([n_atoms * nb.nnei] + feature_shape)
    out = out.index_copy(0, nb.slot, values)
    return out.view([n_atoms, nb.nnei] + feature_shape)


def dense_neighbors(
    edge_index: Tensor, dist: Tensor, n_atoms: int, rcut: float, sel: int
) -> DenseNeighbors:
    """Build the padded layout of the edges shorter than ``rcut`` (``edge_index`` sorted by centre).

    ``dist`` should be detached; it is only used for the cutoff mask and, if some atom has more than
    ``sel`` neighbours, for keeping the nearest ``sel`` ones (a stable per-centre sort). Everything is O(E)
    except that optional sort (O(E log E)).
    """
    centre = edge_index[0]
    keep = torch.nonzero(dist < rcut).squeeze(1)
    c = centre[keep]
    counts = torch.bincount(c, minlength=n_atoms)
    max_count = int(counts.max()) if n_atoms > 0 and c.numel() > 0 else 0
    if max_count > sel:
        # sort by (centre, distance); the key is exact because distances are < rcut
        key = c.to(torch.float64) * (2.0 * rcut + 1.0) + dist[keep].to(torch.float64)
        order = torch.argsort(key, stable=True)
        keep, c = keep[order], c[order]
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(c.numel(), device=c.device) - first[c]
    nnei = max(1, min(sel, max_count))
    if max_count > sel:
        sel_mask = rank < sel
        keep, c, rank = keep[sel_mask], c[sel_mask], rank[sel_mask]
    slot = c * nnei + rank
    index = torch.zeros(n_atoms * nnei, dtype=torch.long, device=c.device)
    index[slot] = edge_index[1, keep]
    mask = torch.zeros(n_atoms * nnei, dtype=torch.bool, device=c.device)
    mask[slot] = True
    return DenseNeighbors(keep, slot, index.view(n_atoms, nnei), mask.view(n_atoms, nnei), nnei)


def padded_softmax(logits: Tensor, sel: int, fill: float) -> Tensor:
    """Softmax over the last axis as if it had ``sel`` entries, the absent ones holding the logit ``fill``.

    The padded layout has ``nnei <= sel`` columns; DeePMD-kit always pads to ``sel`` with the logit
    ``-attnw_shift``, so the absent slots add ``(sel - nnei) exp(fill)`` to the denominator: one extra column
    holding ``fill + log(sel - nnei)`` reproduces that exactly with PyTorch's fused softmax.
    """
    nnei = logits.shape[-1]
    n_missing = sel - nnei
    if n_missing <= 0:
        return torch.softmax(logits, dim=-1)
    pad = torch.full_like(logits[..., :1], fill + math.log(n_missing))
    return torch.softmax(torch.cat([logits, pad], dim=-1), dim=-1)[..., :nnei]


def _init_linear(layer: nn.Linear, bias_std: float = 1.0) -> None:
    """DeePMD-kit's default initialisation: weights N(0, 1/sqrt(fan_in + fan_out)), bias N(0, 1)."""
    fan_out, fan_in = layer.weight.shape
    nn.init.normal_(layer.weight, std=1.0 / math.sqrt(fan_in + fan_out))
    if layer.bias is not None:
        nn.init.normal_(layer.bias, std=bias_std)


def make_linear(n_in: int, n_out: int, bias: bool = True) -> nn.Linear:
    """``nn.Linear`` with DeePMD-kit's initialisation."""
    layer = nn.Linear(n_in, n_out, bias=bias)
    _init_linear(layer)
    return layer


def apply_skip(kind: int, x: Tensor, pre: Tensor) -> Tensor:
    """``tanh(pre)`` plus DeePMD's skip: 1 adds ``x`` (same width), 2 adds ``[x, x]`` (doubled), 0 none."""
    y = torch.tanh(pre)
    if kind == 1:
        y = y + x
    elif kind == 2:
        y = y + torch.cat([x, x], dim=-1)
    return y


def skip_kind(n_in: int, n_out: int) -> int:
    """The skip :func:`apply_skip` uses for a layer of these widths."""
    return 1 if n_out == n_in else 2 if n_out == 2 * n_in else 0


class EmbeddingNet(nn.Module):
    """tanh MLP with DeePMD's skips: ``y = x + act(Wx+b)`` if sizes match, ``[x, x] + act(Wx+b)`` if doubled."""

    def __init__(self, n_in: int, neurons: list[int]) -> None:
        super().__init__()
        sizes = [n_in, *neurons]
        self.layers = nn.ModuleList(make_linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.skips: list[int] = [skip_kind(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
        self.n_in = n_in
        self.n_out = sizes[-1]

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = apply_skip(self.skips[i], x, layer(x))
        return x

    def apply_layer(self, i: int, x: Tensor, pre: Tensor) -> Tensor:
        """Activation plus skip of layer ``i`` given its input ``x`` and pre-activation ``pre``."""
        return apply_skip(self.skips[i], x, pre)


class TypeEmbedding(nn.Module):
    """Type embedding ``tanh(W[type])`` (DeePMD-kit's one-layer type embedding net without bias).

    As DeePMD-kit's embedding layers, it adds its one-hot input back when ``dim`` equals ``ntypes`` (or
    twice it, concatenated twice).
    """

    def __init__(self, ntypes: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(ntypes, dim) / math.sqrt(ntypes + dim))

    def table(self) -> Tensor:
        """(ntypes, dim) embedding of every type."""
        ntypes, dim = self.weight.shape[0], self.weight.shape[1]
        y = torch.tanh(self.weight)
        if dim == ntypes or dim == 2 * ntypes:
            eye = torch.eye(ntypes, dtype=y.dtype, device=y.device)
            y = y + (eye if dim == ntypes else torch.cat([eye, eye], dim=1))
        return y

    def forward(self, types: Tensor) -> Tensor:
        return self.table()[types]
