"""DPA-2 ``repformer`` layers on the padded (N, nnei) neighbour layout.

Channels: ``g1`` (N, ng1) per atom, ``g2`` (N, nnei, ng2) per pair, ``h2`` (N, nnei, 3) per pair direction
(the last three columns of the smooth environment matrix). One layer (update style ``res_residual``,
DeePMD-kit's ``g1_out_conv`` / ``g1_out_mlp`` variant):

* g1 += r1 * tanh(W_self g1) + r2 * conv + r3 * tanh(W_1 [grrg, drrd]) (+ r4 * g1 self-attention)
  - conv_i = sum_j sw_ij (W g2_ij) * g1_j / sel
  - grrg / drrd: ``H = h2^T (sw g) / sqrt(sel)`` for ``g = g2`` and ``g = g1_j``, then ``H_<^T H / 3``
* g2 += r5 * tanh(W_2 g2) + r6 * LayerNorm(gated multi-head attention over neighbours) (+ r7 * W (g1_i g1_j))
  (the last layer does not update g2.)

Smooth attention: logits become ``(a + shift) sw_i sw_j - shift``; weights are multiplied by ``sw_i sw_j``,
so a neighbour at the cutoff behaves exactly like an empty slot. The softmax counts ``sel`` slots whatever
the padded width (:func:`padded_softmax`), so results do not depend on the other atoms in the batch.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lam.models.descriptors.common import make_linear, padded_softmax


class GatedPairAttention(nn.Module):
    """Gated multi-head self-attention among the neighbours of each atom, acting on g2."""

    def __init__(self, ng2: int, hidden: int, nhead: int, sel: int, has_gate: bool = True,
                 shift: float = 20.0) -> None:
        super().__init__()
        self.hidden, self.nhead, self.sel, self.has_gate, self.shift = hidden, nhead, sel, has_gate, shift
        self.mapqk = make_linear(ng2, 2 * nhead * hidden, bias=False)
        self.mapv = make_linear(ng2, ng2 * nhead, bias=False)
        self.head_map = make_linear(ng2 * nhead, ng2)
        self.norm = nn.LayerNorm(ng2, eps=1e-5)

    def forward(self, g2: Tensor, h2: Tensor, sw: Tensor) -> Tensor:
        """``g2`` (N, n, ng2), ``h2`` (N, n, 3), ``sw`` (N, n) -> attention update of g2 (N, n, ng2).

        Computed without per-head permutes: with ``A_h = Wq_h^T Wk_h`` the logits of head ``h`` are
        ``g2_j A_h g2_k^T`` and, with ``B_h = Wo_h Wv_h``, the output is ``sum_h B_h (sum_k w_jhk g2_k)``; each
        step is one matmul over contiguous (query, head) rows.
        """
        n_atoms, nnei, ng2 = g2.shape
        h, d = self.nhead, self.hidden
        wqk = self.mapqk.weight.view(2, h, d, ng2)
        a_all = torch.matmul(wqk[0].transpose(1, 2), wqk[1])  # (h, ng2, ng2): A_h = Wq_h^T Wk_h
        p = torch.matmul(g2, a_all.transpose(0, 1).reshape(ng2, h * ng2))  # (N, n, h*ng2)
        raw = torch.bmm(p.view(n_atoms, nnei * h, ng2), g2.transpose(1, 2))  # (N, n*h, n): [j, h, k]
        raw = raw.view(n_atoms, nnei, h, nnei)
        sw2 = (sw.unsqueeze(-1) * sw.unsqueeze(-2)).unsqueeze(2)  # (N, n, 1, n)
        hh = torch.bmm(h2, h2.transpose(1, 2)).unsqueeze(2)  # (N, n, 1, n)
        # smooth logits (a * gate + shift) * sw_j sw_k - shift, as one fused multiply-add
        scale = sw2 * hh / math.sqrt(d) if self.has_gate else sw2 / math.sqrt(d)
        logits = torch.addcmul(self.shift * (sw2 - 1.0), raw, scale)
        w = padded_softmax(logits, self.sel, -self.shift)  # over sel slots; absent ones hold -shift
        w = w * (sw2 * hh / math.sqrt(3.0))  # (N, n, h, n)
        z = torch.bmm(w.reshape(n_atoms, nnei * h, nnei), g2)  # (N, n*h, ng2): sum_k w_jhk g2_k
        wv = self.mapv.weight.view(h, ng2, ng2)
        wo = self.head_map.weight.view(ng2, h, ng2).transpose(0, 1)  # (h, out, c)
        b_cat = torch.matmul(wo, wv).transpose(1, 2).reshape(h * ng2, ng2)  # rows (h, in), cols out
        out = torch.addmm(self.head_map.bias, z.view(n_atoms * nnei, h * ng2), b_cat)
        return self.norm(out.view(n_atoms, nnei, ng2))


class LocalAttention(nn.Module):
    """Multi-head attention of atom ``i`` (query g1_i) over its neighbours (keys/values from g1_j)."""

    def __init__(self, ng1: int, hidden: int, nhead: int, sel: int, shift: float = 20.0) -> None:
        super().__init__()
        self.ng1, self.hidden, self.nhead, self.sel, self.shift = ng1, hidden, nhead, sel, shift
        self.mapq = make_linear(ng1, hidden * nhead, bias=False)
        self.mapkv = make_linear(ng1, (hidden + ng1) * nhead, bias=False)
        self.head_map = make_linear(ng1 * nhead, ng1)

    def forward(self, g1: Tensor, gg1: Tensor, sw: Tensor) -> Tensor:
        """Query ``g1`` (N, ng1), neighbour features ``gg1`` (N, n, ng1), ``sw`` (N, n) -> (N, ng1).

        Keys and values are never materialised per neighbour: the logits are ``(A_h^T g1_i) . g1_j`` with
        ``A_h = Wk_h^T Wq_h`` and the output ``sum_h (Wo_h Wv_h) (sum_j w_hj g1_j)``.
        """
        n_atoms, nnei, ng1 = gg1.shape
        h, d = self.nhead, self.hidden
        wq = self.mapq.weight.view(h, d, ng1)
        wkv = self.mapkv.weight.view(h, d + ng1, ng1)
        a_all = torch.matmul(wq.transpose(1, 2), wkv[:, :d])  # (h, ng1, ng1) = Wq_h^T Wk_h
        p = torch.matmul(g1.unsqueeze(1).unsqueeze(1), a_all).squeeze(2)  # (N, h, ng1)
        logits = torch.bmm(p, gg1.transpose(1, 2)) / math.sqrt(d)  # (N, h, n)
        s = sw.unsqueeze(1)
        logits = (logits + self.shift) * s - self.shift
        w = padded_softmax(logits, self.sel, -self.shift)
        z = torch.bmm(w * s, gg1)  # (N, h, ng1)
        wo = self.head_map.weight.view(ng1, h, ng1).transpose(0, 1)  # (h, out, c)
        b_all = torch.matmul(wo, wkv[:, d:])  # (h, out, in)
        out = torch.einsum("nhc,hoc->no", z, b_all)
        return out + self.head_map.bias


class RepformerLayer(nn.Module):
    """One repformer layer (see the module docstring)."""

    def __init__(self, sel: int, g1_dim: int, g2_dim: int, axis_neuron: int, update_g2: bool,
                 g1_attn: bool, attn1_hidden: int, attn1_nhead: int, g2_attn: bool, attn2_hidden: int,
                 attn2_nhead: int, attn2_has_gate: bool, g2_g1g1: bool, residual: float) -> None:
        super().__init__()
        self.sel, self.axis, self.update_g2 = sel, axis_neuron, update_g2
        self.g1_self = make_linear(g1_dim, g1_dim)
        self.proj_g2g1 = make_linear(g2_dim, g1_dim, bias=False)
        self.linear1 = make_linear(axis_neuron * (g1_dim + g2_dim), g1_dim)
        self.loc_attn = LocalAttention(g1_dim, attn1_hidden, attn1_nhead, sel) if g1_attn else None
        n_g1 = 3 + int(g1_attn)
        self.g1_residual = nn.Parameter(torch.randn(n_g1, g1_dim) * residual)
        self.linear2 = self.attn2 = self.proj_g1g1 = self.g2_residual = None
        if update_g2:
            self.linear2 = make_linear(g2_dim, g2_dim)
            if g2_attn:
                self.attn2 = GatedPairAttention(g2_dim, attn2_hidden, attn2_nhead, sel, attn2_has_gate)
            if g2_g1g1:
                self.proj_g1g1 = make_linear(g1_dim, g2_dim, bias=False)
            n_g2 = 1 + int(g2_attn) + int(g2_g1g1)
            self.g2_residual = nn.Parameter(torch.randn(n_g2, g2_dim) * residual)

    def forward(self, g1: Tensor, g2: Tensor, h2: Tensor, sw: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        """``g1`` (N, ng1), ``g2`` (N, n, ng2), ``h2`` (N, n, 3), ``sw`` (N, n) zero in empty slots,
        ``index`` (N, n) neighbour atom of each slot. Returns the new ``(g1, g2)``."""
        n_atoms, nnei, ng2 = g2.shape
        gg1 = g1[index]  # (N, n, ng1)
        sw_ = sw.unsqueeze(-1)
        g2_sw = g2 * sw_
        # conv: sum_j (W sw g2_ij) * g1_j / sel  (W has no bias, so sw moves onto the narrow g2)
        conv = (self.proj_g2g1(g2_sw) * gg1).sum(dim=1) / self.sel
        # grrg and drrd: H = h2^T (sw g) / sqrt(sel), then H_<^T H / 3 (sw moves onto h2 for drrd)
        h2t = h2.transpose(1, 2) / math.sqrt(self.sel)
        hg2 = torch.bmm(h2t, g2_sw)
        hg1 = torch.bmm(h2t * sw.unsqueeze(1), gg1)
        grrg = torch.bmm(hg2[..., : self.axis].transpose(1, 2), hg2) / 3.0
        drrd = torch.bmm(hg1[..., : self.axis].transpose(1, 2), hg1) / 3.0
        mlp = torch.tanh(self.linear1(torch.cat([grrg.reshape(n_atoms, -1), drrd.reshape(n_atoms, -1)], -1)))
        res = self.g1_residual
        g1_new = g1 + res[0] * mlp + res[1] * torch.tanh(self.g1_self(g1)) + res[2] * conv
        if self.loc_attn is not None:
            g1_new = g1_new + res[3] * self.loc_attn(g1, gg1, sw)
        if self.linear2 is None:  # the last layer does not update g2
            return g1_new, g2
        r2 = self.g2_residual
        assert r2 is not None
        g2_new = g2 + r2[0] * torch.tanh(self.linear2(g2))
        k = 1
        if self.attn2 is not None:
            g2_new = g2_new + r2[k] * self.attn2(g2, h2, sw)
            k += 1
        if self.proj_g1g1 is not None:
            g2_new = g2_new + r2[k] * self.proj_g1g1(g1.unsqueeze(1) * (gg1 * sw_))
        return g1_new, g2_new
