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

import copy
import math
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


class _TabulatedEmbedding(torch.autograd.Function):
    """G(s) from per-interval cubic coefficients; backward gives dL/ds = sum_m dL/dG_m * dG_m/ds.

    ``table`` is (4, P, K, M): one contiguous table per cubic coefficient, so that every gather and every
    Horner step (fused multiply-adds, ``addcmul``) runs on contiguous (E, M) tensors. Intervals
    ``0 .. n_fine - 1`` have width ``s_step`` and start at 0, the following ones width ``coarse_step`` (a
    coarser extension of the range). Beyond the
    last interval G continues linearly with its end slope (value and slope continuous, so forces stay
    the exact gradient of the energy): a cubic extrapolated far past its interval grows like ``t**3`` and
    drives close pairs into an unphysical, ever steeper well.
    """

    @staticmethod
    def forward(ctx, s: Tensor, pair: Tensor, table: Tensor, s_step: float, n_fine: int,  # type: ignore[override]
                coarse_step: float) -> Tensor:
        _, n_pair, n_int, m = table.shape
        x = s / s_step
        if n_int > n_fine:
            fine = x < n_fine
            x = torch.where(fine, x, n_fine + (s - n_fine * s_step) / coarse_step)
        k = x.floor().clamp_(0, n_int - 1)
        t = (x - k).unsqueeze(-1)
        rows = pair * n_int + k.long()
        a, b, c, d = (table[i].view(n_pair * n_int, m).index_select(0, rows) for i in range(4))
        past_end = bool((t > 1.0).any())
        tc = t.clamp(max=1.0) if past_end else t  # t > 1 only past the end of the table: linear continuation
        g = torch.addcmul(b, torch.addcmul(c, d, tc), tc)
        g = torch.addcmul(a, g, tc)
        dg_dt = None
        if ctx.needs_input_grad[0] or past_end:
            # dG/dt = b + t (2 c + 3 t d) = b + 2 t (c + 1.5 t d) at tc; 1 / step is applied in backward
            dg_dt = torch.addcmul(b, torch.addcmul(c, d, tc, value=1.5), tc, value=2.0)
            if past_end:
                g = torch.addcmul(g, dg_dt, t - tc)
        if ctx.needs_input_grad[0]:
            inv_step = torch.full_like(s, 1.0 / s_step)
            if n_int > n_fine:
                inv_step = torch.where(fine, inv_step, 1.0 / coarse_step)
            ctx.save_for_backward(dg_dt, inv_step)
        return g

    @staticmethod
    def backward(ctx, grad_g: Tensor):  # type: ignore[override]
        dg_dt, inv_step = ctx.saved_tensors
        grad_s = torch.bmm(grad_g.unsqueeze(1), dg_dt.unsqueeze(2)).view(-1) * inv_step
        return grad_s, None, None, None, None, None


_CHUNK_ROWS = 8192  # rows of the padded layout per table-evaluation chunk: the (rows, M) temporaries stay in cache


def _tabulate_into(s: Tensor, pair: Tensor, table: Tensor, s_step: float, n_fine: int, coarse_step: float,
                   g_out: Tensor, dg_out: Tensor, chunk: int = _CHUNK_ROWS) -> None:
    """Write G (R, M) and dG/ds (R, M) of the tabulated embedding into ``g_out`` / ``dg_out`` (no autograd).

    Same pieces as :class:`_TabulatedEmbedding`, evaluated ``chunk`` rows at a time so that the four gathered
    coefficient blocks and the Horner temporaries of a chunk stay in cache instead of streaming (R, M)
    tensors through memory once per operation.
    """
    _, n_pair, n_int, m = table.shape
    coef = [table[i].view(n_pair * n_int, m) for i in range(4)]
    for r0 in range(0, s.shape[0], chunk):
        r1 = min(r0 + chunk, s.shape[0])
        sc = s[r0:r1]
        x = sc / s_step
        inv_step = None
        if n_int > n_fine:
            fine = x < n_fine
            x = torch.where(fine, x, n_fine + (sc - n_fine * s_step) / coarse_step)
            inv_step = torch.where(fine, 1.0 / s_step, 1.0 / coarse_step).unsqueeze(-1)
        k = x.floor().clamp_(0, n_int - 1)
        t = (x - k).unsqueeze(-1)
        rows = pair[r0:r1] * n_int + k.long()
        a, b, c, d = (cf.index_select(0, rows) for cf in coef)
        tc = t.clamp(max=1.0)  # t > 1 only past the end of the table: linear continuation
        g, dg = g_out[r0:r1], dg_out[r0:r1]
        torch.addcmul(c, d, tc, out=g)
        torch.addcmul(b, g, tc, out=g)
        torch.addcmul(a, g, tc, out=g)
        torch.addcmul(c, d, tc, value=1.5, out=dg)
        torch.addcmul(b, dg, tc, value=2.0, out=dg)  # dG/dt = b + 2 t (c + 1.5 t d)
        if bool((t > 1.0).any()):
            g.addcmul_(dg, t - tc)
        if inv_step is None:
            dg.mul_(1.0 / s_step)
        else:
            dg.mul_(inv_step)


class _FusedCompressedSeE2A(torch.autograd.Function):
    """The whole compressed descriptor as one autograd node: ``D(edge_vec)`` with an analytic backward.

    The table is evaluated directly on the padded (N, nnei) layout (empty slots read the table at s = 0 and
    are multiplied by their zero environment rows), in cache-sized chunks; the backward contracts the saved
    G and dG/ds with dL/dT by batched matmuls, never forming a per-edge (E, M) gradient. Same numbers as the
    op-by-op autograd graph through :class:`_TabulatedEmbedding` (tested), with far less memory traffic and
    one autograd node instead of ~50. Only first derivatives (forces, virials); training runs the network.
    """

    @staticmethod
    def forward(ctx, edge_vec: Tensor, flat: Tensor, pair: Tensor, n_atoms: int,  # type: ignore[override]
                nnei: int, desc: SeE2A, table: Tensor) -> Tensor:
        rc, rs = desc.rcut, desc.rcut_smth
        r = torch.linalg.vector_norm(edge_vec, dim=-1)
        inv_r = 1.0 / r
        u = ((r - rs) / (rc - rs)).clamp(0.0, 1.0)
        uu = u * u
        sw = uu * u * (-6.0 * uu + 15.0 * u - 10.0) + 1.0
        dsw = -30.0 / (rc - rs) * uu * (u - 1.0) ** 2  # zero outside the switching region
        inv_std = 1.0 / desc.env_std
        s = sw * inv_r * inv_std
        ds_dr = dsw * inv_r * inv_std - s * inv_r
        q = s * inv_r  # env[:, 1:] = q * edge_vec
        n_rows = n_atoms * nnei
        m = table.shape[-1]
        env = torch.cat([s.unsqueeze(-1), q.unsqueeze(-1) * edge_vec], dim=-1)  # (E, 4)
        env_pad = env.new_zeros(n_rows, 4).index_copy_(0, flat, env).view(n_atoms, nnei, 4)
        s_pad = s.new_zeros(n_rows).index_copy_(0, flat, s)
        pair_pad = pair.new_zeros(n_rows).index_copy_(0, flat, pair)
        g_pad = s.new_empty(n_rows, m)
        dg_pad = s.new_empty(n_rows, m)
        _tabulate_into(s_pad, pair_pad, table, desc.table_step, desc.table_n_fine, desc.table_coarse_step,
                       g_pad, dg_pad)
        g_pad, dg_pad = g_pad.view(n_atoms, nnei, m), dg_pad.view(n_atoms, nnei, m)
        t = torch.bmm(env_pad.transpose(1, 2), g_pad).mul_(1.0 / desc.sel)  # (N, 4, M)
        axis = desc.axis_neuron
        d = torch.bmm(t.transpose(1, 2), t[:, :, :axis])  # (N, M, axis)
        ctx.save_for_backward(edge_vec, inv_r, q, ds_dr, env_pad, g_pad, dg_pad, t, flat)
        ctx.axis, ctx.sel = axis, desc.sel
        return d.reshape(n_atoms, m * axis)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_d: Tensor):  # type: ignore[override]
        edge_vec, inv_r, q, ds_dr, env_pad, g_pad, dg_pad, t, flat = ctx.saved_tensors
        n_atoms, nnei, m = g_pad.shape
        axis = ctx.axis
        gd = grad_d.reshape(n_atoms, m, axis)
        # D[m, a] = sum_c T[c, m] T[c, a], so dL/dT[c, m] = sum_a gD[m, a] T[c, a] + [m < axis] sum_k gD[k, m] T[c, k]
        gt = torch.bmm(t[:, :, :axis], gd.transpose(1, 2))
        gt[:, :, :axis] += torch.bmm(t, gd)
        gt_t = gt.mul_(1.0 / ctx.sel).transpose(1, 2)  # (N, M, 4)
        # dL/denv = G dL/dT^T; dL/ds through G = sum_m (env dL/dT)_m dG_m/ds = env . (dG/ds dL/dT^T)
        g_env = torch.bmm(g_pad, gt_t).view(n_atoms * nnei, 4).index_select(0, flat)  # (E, 4)
        h = torch.bmm(dg_pad, gt_t).mul_(env_pad).sum(-1).view(-1).index_select(0, flat)  # (E,)
        g_s = h + g_env[:, 0]
        g_dir = g_env[:, 1:]
        # env[:, 1:] = q(r) v with q = s / r:  dL/dv = q gdir + (gdir . v) q'(r) v / r + g_s s'(r) v / r
        dq_dr = (ds_dr - q) * inv_r
        radial = ((g_dir * edge_vec).sum(-1) * dq_dr + g_s * ds_dr) * inv_r
        grad_v = torch.addcmul(g_dir * q.unsqueeze(-1), radial.unsqueeze(-1), edge_vec)
        return grad_v, None, None, None, None, None, None


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
        env_shift: subtracted from the scaled ``s`` at the embedding input only (not in the environment matrix,
            which must vanish at the cutoff), so that the first tanh layer sees centred inputs.

    Features are returned unnormalised (their size depends on the neighbour count and ``sel``); the fitting
    heads can standardise them (``Potential.fit_output_statistics``).
    """

    __jit_unused_properties__ = ["cutoffs", "config"]
    __jit_ignored_attributes__ = ["table", "table_stamp", "table_args"]

    def __init__(self, ntypes: int, rcut: float = 5.0, rcut_smth: float = 0.5,
                 neurons: Sequence[int] = (16, 32, 64), axis_neuron: int = 8, sel: int = 64,
                 activation: str = "tanh", env_std: float = 1.0, env_shift: float = 0.0) -> None:
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
        self.env_shift = float(env_shift)
        self.dim_out = neurons[-1] * self.axis_neuron
        npair = self.ntypes * self.ntypes
        # First layer per (centre type, neighbour type) pair: h = act(s * w[p] + b[p]).
        self.first_weight = nn.Parameter(torch.randn(npair, neurons[0]))
        self.first_bias = nn.Parameter(torch.randn(npair, neurons[0]) * 0.1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(neurons[:-1], neurons[1:]))
        self.act = make_activation(activation)
        self.table: Tensor | None = None
        self.table_step = 0.0
        self.table_coarse_step = 0.0
        self.table_n_fine = 0
        self.table_args: tuple = ()
        self.table_stamp: tuple = ()
        self.fused = True  # compressed inference as one autograd node (first derivatives only)

    @torch.no_grad()
    def compress(self, r_min: float = 0.5, n_intervals: int | None = None, extrapolate: float = 5.0,
                 coarse_ratio: int = 10, stride: float = 0.01) -> None:
        """Tabulate the embedding net (DeePMD-kit's model compression) for fast inference.

        Every type pair's net ``G(s)`` is replaced, in eval mode, by cubic Hermite pieces (values and exact
        slopes at the nodes, from forward-mode AD in float64): ``n_intervals`` uniform intervals of ``s`` in
        ``[0, s(r_min)]`` (default: width ``stride`` in the net's standardised input, as DeePMD-kit; force
        errors ~1e-6 relative), then intervals ``coarse_ratio`` times wider up to ``extrapolate * s(r_min)``
        (pairs down to ``r_min / extrapolate``); closer pairs continue the last piece linearly. The
        tabulated energy is C1 in the positions, so forces stay its exact gradient. ``s`` is the scaled
        radial value of :meth:`forward` (``s(r) / env_std``) and :meth:`embedding` applies ``env_shift``
        itself, so the table follows both. Training mode always runs the network; the table is rebuilt
        when a weight or the statistics (``env_std``, ``env_shift``) change.
        """
        s_max = 1.0 / (r_min * self.env_std)
        auto = n_intervals is None
        if n_intervals is None:
            n_intervals = max(1, math.ceil(s_max / stride))
        if r_min <= 0 or n_intervals < 1 or extrapolate < 1 or coarse_ratio < 1:
            raise ValueError(f"compress needs r_min > 0, n_intervals >= 1, extrapolate >= 1 and coarse_ratio >= 1, "
                             f"got {r_min}, {n_intervals}, {extrapolate}, {coarse_ratio}")
        step = s_max / n_intervals
        coarse_step = step * coarse_ratio
        n_coarse = math.ceil((extrapolate - 1.0) * s_max / coarse_step - 1e-9)
        device = self.first_weight.device
        nodes = torch.cat([torch.arange(n_intervals + 1, dtype=torch.float64, device=device) * step,
                           s_max + torch.arange(1, n_coarse + 1, dtype=torch.float64, device=device) * coarse_step])
        width = (nodes[1:] - nodes[:-1]).unsqueeze(-1)  # (K, 1)
        ref = copy.deepcopy(self).double()
        ref.table = None
        npair = self.ntypes * self.ntypes
        values, slopes = [], []
        for p in range(npair):
            pair = torch.full_like(nodes, p, dtype=torch.long)
            v, dv = torch.func.jvp(lambda x, pair=pair: ref.embedding(x, pair), (nodes,), (torch.ones_like(nodes),))
            values.append(v)
            slopes.append(dv)
        v, dv = torch.stack(values), torch.stack(slopes)  # (P, K + 1, M)
        v0, v1, d0, d1 = v[:, :-1], v[:, 1:], dv[:, :-1] * width, dv[:, 1:] * width
        coef = torch.stack([v0, d0, 3.0 * (v1 - v0) - 2.0 * d0 - d1, 2.0 * (v0 - v1) + d0 + d1])
        self.table = coef.to(self.first_weight.dtype).contiguous()  # (4, P, K, M)
        self.table_step = step
        self.table_coarse_step = coarse_step
        self.table_n_fine = n_intervals
        self.table_args = (r_min, None, extrapolate, coarse_ratio, stride) if auto else \
            (r_min, n_intervals, extrapolate, coarse_ratio, stride)
        self.table_stamp = self._weights_stamp()

    def _weights_stamp(self) -> tuple:
        """Identity and in-place version of every embedding weight, and the input scaling (``env_std``,
        ``env_shift``): changes whenever anything the table depends on changes."""
        return (self.env_std, self.env_shift,
                *((p.data_ptr(), p._version, p.dtype) for p in self.embedding_parameters()))

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [self.first_weight, self.first_bias, *self.layers.parameters()]

    @torch.jit.unused
    def eager_embedding(self, s: Tensor, pair: Tensor) -> Tensor:
        """The tabulated embedding in eval mode once compressed (re-tabulated first if a weight changed
        since), else the network."""
        if self.table is None or self.training:
            return self.embedding(s, pair)
        if self._weights_stamp() != self.table_stamp:
            self.compress(*self.table_args)
        table = self.table.to(device=s.device, dtype=s.dtype)
        return _TabulatedEmbedding.apply(s, pair, table, self.table_step, self.table_n_fine,
                                         self.table_coarse_step)

    @torch.jit.unused
    def _fused_ready(self) -> bool:
        """Whether :meth:`forward` takes the fused compressed path: compressed, eval mode, table up to date
        (re-tabulated here if a weight changed) and no higher-order derivatives requested."""
        if self.table is None or self.training or not self.fused:
            return False
        if self._weights_stamp() != self.table_stamp:
            self.compress(*self.table_args)
        return True

    @torch.jit.unused
    def _fused_forward(self, types: Tensor, centre: Tensor, neigh: Tensor, edge_vec: Tensor) -> Tensor | None:
        """The compressed descriptor as one autograd node, or None when :meth:`_fused_ready` says no."""
        if not self._fused_ready():
            return None
        n_atoms = types.shape[0]
        pair = types[centre] * self.ntypes + types[neigh]
        slot, nnei = padded_slots(centre, n_atoms)
        table = self.table.to(device=edge_vec.device, dtype=edge_vec.dtype)  # type: ignore[union-attr]
        return _FusedCompressedSeE2A.apply(edge_vec, centre * nnei + slot, pair, n_atoms, max(nnei, 1), self, table)

    @torch.no_grad()
    def compute_env_stats(self, samples: list[tuple[Tensor, Tensor, Tensor]]) -> None:
        """Set ``env_std`` and ``env_shift`` from data: the standard deviation and the mean of ``s(r)`` over the
        real neighbours within the cutoff, so that the embedding net sees inputs of zero mean and unit variance.

        (Padded ``sel`` slots are not counted, unlike DeePMD-kit's statistics: with molecules of a few atoms
        and ``sel = 64`` they would shrink the scale ~4x and saturate the first tanh layer.)
        """
        s1, s2, n = 0.0, 0.0, 0
        for _types, _edge_index, edge_vec in samples:
            r = torch.linalg.vector_norm(edge_vec, dim=-1).double()
            r = r[(r < self.rcut) & (r > 0)]
            s = smooth_switch(r, self.rcut_smth, self.rcut) / r
            s1 += float(s.sum())
            s2 += float((s**2).sum())
            n += int(s.numel())
        if n >= 2:
            mean = s1 / n
            std = math.sqrt(max(s2 / n - mean * mean, 0.0))
            self.env_std = max(std, 1e-2)
            self.env_shift = mean / self.env_std
            # a table made with the old scale is stale: the changed stamp rebuilds it on the next eval pass

    @property
    def cutoffs(self) -> list[float]:
        """All cutoffs the descriptor reads (one)."""
        return [self.rcut]

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments, enough to rebuild the descriptor."""
        return {"ntypes": self.ntypes, "rcut": self.rcut, "rcut_smth": self.rcut_smth,
                "neurons": list(self.neurons), "axis_neuron": self.axis_neuron, "sel": self.sel,
                "activation": self.activation, "env_std": self.env_std, "env_shift": self.env_shift}

    def embedding(self, s: Tensor, pair: Tensor) -> Tensor:
        """Embedding net G (E, M) of the scaled radial value ``s`` (E,) for type-pair indices ``pair`` (E,)."""
        x = self.act((s - self.env_shift).unsqueeze(-1) * self.first_weight[pair] + self.first_bias[pair])
        for layer in self.layers:
            y = self.act(layer(x))
            if y.shape[-1] == x.shape[-1]:
                x = x + y
            elif y.shape[-1] == 2 * x.shape[-1]:  # DeePMD's doubling skip: y + [x, x], without the cat
                x = (y.view(y.shape[0], 2, x.shape[-1]) + x.unsqueeze(1)).view(y.shape[0], y.shape[-1])
            else:
                x = y
        return x

    def forward(self, types: Tensor, edge_index: Tensor, edge_vec: Tensor) -> Tensor:
        """Per-atom descriptor (N, M * axis) from types (N,), centre-sorted edges (2, E) and r_ij (E, 3)."""
        n_atoms = types.shape[0]
        r2 = (edge_vec * edge_vec).sum(-1)
        keep = r2 < self.rcut * self.rcut
        if not bool(keep.all().item()):  # a graph built for a larger cutoff (e.g. a direct head's)
            idx = torch.nonzero(keep).squeeze(1)
            edge_index, edge_vec, r2 = edge_index.index_select(1, idx), edge_vec.index_select(0, idx), r2[idx]
        centre, neigh = edge_index[0], edge_index[1]
        if not torch.jit.is_scripting():
            fused = self._fused_forward(types, centre, neigh, edge_vec)
            if fused is not None:
                return fused
        r = torch.sqrt(r2)
        s = smooth_switch(r, self.rcut_smth, self.rcut) / r / self.env_std
        env = torch.cat([s.unsqueeze(-1), (s / r).unsqueeze(-1) * edge_vec], dim=-1)  # (E, 4)
        pair = types[centre] * self.ntypes + types[neigh]
        if torch.jit.is_scripting():
            g = self.embedding(s, pair)  # (E, M)
        else:
            g = self.eager_embedding(s, pair)
        slot, nnei = padded_slots(centre, n_atoms)
        m = g.shape[-1]
        env_pad = env.new_zeros(n_atoms, nnei, 4).index_put_((centre, slot), env)
        g_pad = g.new_zeros(n_atoms, nnei, m).index_put_((centre, slot), g)
        t = torch.bmm(env_pad.transpose(1, 2), g_pad) / self.sel  # (N, 4, M)
        d = torch.bmm(t.transpose(1, 2), t[:, :, : self.axis_neuron])  # (N, M, axis)
        return d.reshape(n_atoms, self.dim_out)
