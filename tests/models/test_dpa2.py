"""Tests of the DPA-2 descriptor: fidelity to DeePMD-kit's sizes and formulas, symmetry, smoothness, gradients."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lam.models.descriptors.common import dense_neighbors, smooth_switch
from lam.models.descriptors.dpa2 import DPA2Descriptor
from lam.models.descriptors.repformer import GatedPairAttention, LocalAttention
from lam.models.presets import DPA2_PRESETS, build_dpa2, get_preset

DATA = Path(__file__).resolve().parents[1] / "data" / "deepmd_water_64h2o" / "data_0"

# a fast configuration that still switches every optional block on
TINY = dict(repinit_neuron=[6, 12], repinit_axis_neuron=3, three_body_neuron=[2, 4], repformer_nlayers=2,
            g1_dim=12, g2_dim=6, axis_neuron=2, update_g1_has_attn=True, attn1_hidden=5, attn1_nhead=2,
            attn2_hidden=4, attn2_nhead=2, update_g2_has_g1g1=True, update_residual=0.3)


def tiny_model(**kw) -> DPA2Descriptor:
    torch.manual_seed(0)
    return build_dpa2("medium", 2, **{**TINY, **kw}).double()


def all_pairs(pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ordered pair i != j of a non-periodic cluster, sorted by centre; edge vectors keep autograd."""
    n = pos.shape[0]
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = i != j
    ei = torch.stack([i[keep], j[keep]])
    return ei, pos[ei[1]] - pos[ei[0]]


def cluster(n: int = 9, seed: int = 1, box: float = 4.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Random cluster with no pair closer than 0.9 Å."""
    g = torch.Generator().manual_seed(seed)
    pts: list[torch.Tensor] = []
    while len(pts) < n:
        p = torch.rand(3, generator=g, dtype=torch.float64) * box
        if all(torch.linalg.norm(p - q) > 0.9 for q in pts):
            pts.append(p)
    types = torch.randint(0, 2, (n,), generator=g)
    return torch.stack(pts), types


def energy_and_forces(model, types, pos):
    pos = pos.clone().requires_grad_(True)
    ei, vec = all_pairs(pos)
    out = model(types, ei, vec)
    e = (out * torch.linspace(-1.0, 1.0, out.shape[1], dtype=out.dtype)).sum()
    (f,) = torch.autograd.grad(e, pos)
    return out.detach(), -f


# ---------------------------------------------------------------- fidelity: sizes of DeePMD-kit's models
@pytest.mark.parametrize("preset,descriptor,total", [("small", 472_938, 622_219), ("medium", 867_882, 1_017_163)])
def test_parameter_counts_match_deepmd(preset, descriptor, total):
    model = build_dpa2(preset, ntypes=2)
    n_desc = sum(p.numel() for p in model.parameters())
    assert abs(n_desc - descriptor) <= 0.15 * descriptor
    widths = [model.dim_out, *get_preset(preset)["fitting_neurons"], 1]
    n_fit = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    assert abs(n_desc + n_fit - total) <= 0.15 * total
    assert model.rcut == 6.0 and model.dim_out == 136 and model.ntypes == 2


def test_presets_differ_as_deepmd_examples():
    assert [DPA2_PRESETS[k]["repformer_nlayers"] for k in ("small", "medium", "large")] == [3, 6, 12]
    assert not DPA2_PRESETS["small"]["update_g2_has_attn"] and DPA2_PRESETS["large"]["update_g2_has_attn"]
    with pytest.raises(KeyError, match="unknown DPA-2 preset 'huge'"):
        get_preset("huge")
    with pytest.raises(TypeError, match="g3_dim"):
        build_dpa2("small", 2, g3_dim=4)
    get_preset("small")["repinit_neuron"].append(7)  # a copy: the preset itself is untouched
    assert DPA2_PRESETS["small"]["repinit_neuron"] == [25, 50, 100]


def test_switch_function_is_c2():
    r = torch.tensor([0.4, 0.5, 3.0, 5.999999, 6.0, 7.0], dtype=torch.float64, requires_grad=True)
    sw = smooth_switch(r, 0.5, 6.0)
    assert torch.allclose(sw[[0, 1]], torch.ones(2, dtype=torch.float64))
    assert sw[4] == 0 and sw[5] == 0 and 0 < sw[2] < 1
    (g,) = torch.autograd.grad(sw.sum(), r, create_graph=True)
    assert abs(float(g[3].detach())) < 1e-9 and float(g[4].detach()) == 0.0


# ---------------------------------------------------------------- shapes, symmetry
def test_output_shape_and_invariances():
    model = tiny_model()
    pos, types = cluster()
    ei, vec = all_pairs(pos)
    out = model(types, ei, vec)
    assert out.shape == (9, model.dim_out) and torch.isfinite(out).all()
    assert out.std(0).max() > 1e-3  # atoms are told apart
    # rotation (proper and improper) and translation of the positions
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)))
    for rot in (q, -q):
        out_r = model(types, *all_pairs(pos @ rot.T + torch.tensor([3.0, -1.0, 7.0], dtype=torch.float64)))
        torch.testing.assert_close(out_r, out, rtol=1e-10, atol=1e-10)
    # permutation of the atoms
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(4))
    out_p = model(types[perm], *all_pairs(pos[perm]))
    torch.testing.assert_close(out_p, out[perm], rtol=1e-10, atol=1e-10)


def test_neighbour_order_within_centre_does_not_matter():
    model = tiny_model()
    pos, types = cluster()
    ei, vec = all_pairs(pos)
    g = torch.Generator().manual_seed(5)
    order = torch.argsort(ei[0].double() + 0.5 * torch.rand(ei.shape[1], generator=g, dtype=torch.float64))
    assert (ei[0, order] == ei[0]).all() and not (order == torch.arange(len(order))).all()
    torch.testing.assert_close(model(types, ei[:, order], vec[order]), model(types, ei, vec))


def test_edges_beyond_cutoff_are_ignored_and_isolated_atoms_work():
    model = tiny_model()
    pos, types = cluster(6)
    far = torch.tensor([[30.0, 0.0, 0.0]], dtype=torch.float64)  # no neighbour within 6 Å
    pos2 = torch.cat([pos, far])
    types2 = torch.cat([types, torch.tensor([1])])
    out2 = model(types2, *all_pairs(pos2))  # the list holds edges of ~30 Å, to be ignored
    torch.testing.assert_close(out2[:6], model(types, *all_pairs(pos)))
    alone = model(torch.tensor([1]), torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, 3, dtype=torch.float64))
    assert torch.isfinite(alone).all()
    torch.testing.assert_close(out2[6:], alone)


def test_batch_of_two_systems_equals_each_alone():
    """Different neighbour counts give different padded widths: the result must not notice."""
    model = tiny_model()
    pos_a, types_a = cluster(9, seed=1, box=4.0)
    pos_b, types_b = cluster(5, seed=2, box=6.0)
    ei_a, vec_a = all_pairs(pos_a)
    ei_b, vec_b = all_pairs(pos_b)
    out_a = model(types_a, ei_a, vec_a)
    out_b = model(types_b, ei_b, vec_b)
    out = model(torch.cat([types_a, types_b]), torch.cat([ei_a, ei_b + 9], 1), torch.cat([vec_a, vec_b]))
    torch.testing.assert_close(out[:9], out_a, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out[9:], out_b, rtol=1e-12, atol=1e-12)


def test_only_nearest_sel_neighbours_are_used():
    torch.manual_seed(0)
    model = build_dpa2("medium", 2, **{**TINY, "repinit_sel": 5, "repformer_sel": 4, "three_body_sel": 4}).double()
    pos, types = cluster(10, seed=6, box=3.5)
    ei, vec = all_pairs(pos)
    out = model(types, ei, vec)
    # keeping by hand the nearest 5 (within 6 Å) per centre gives the same repinit input; the 4 Å blocks
    # use the nearest 4 of those, so the result must be identical
    d = vec.norm(dim=-1)
    keep = torch.cat([torch.nonzero(ei[0] == i).flatten()[torch.argsort(d[ei[0] == i])[:5]] for i in range(10)])
    keep = keep[torch.argsort(ei[0, keep], stable=True)]
    torch.testing.assert_close(model(types, ei[:, keep], vec[keep]), out)


# ---------------------------------------------------------------- smoothness across both cutoffs
@pytest.mark.parametrize("rc", [6.0, 4.0])
def test_value_and_forces_continuous_across_cutoff(rc):
    model = tiny_model()
    base = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.2, 0.0], [0.9, -0.5, 0.3]], dtype=torch.float64)
    types = torch.tensor([0, 1, 1, 0])
    res = []
    for r in (rc - 1e-6, rc + 1e-6):
        pos = torch.cat([base, torch.tensor([[r, 0.0, 0.0]], dtype=torch.float64)])
        res.append(energy_and_forces(model, types, pos))
    (o1, f1), (o2, f2) = res
    torch.testing.assert_close(o1, o2, rtol=0, atol=1e-9)
    torch.testing.assert_close(f1, f2, rtol=0, atol=1e-8)
    # and the neighbour does matter inside the cutoff
    pos_in = torch.cat([base, torch.tensor([[rc - 1.0, 0.0, 0.0]], dtype=torch.float64)])
    assert (energy_and_forces(model, types, pos_in)[0] - o2).abs().max() > 1e-6


# ---------------------------------------------------------------- gradients
def test_gradcheck_wrt_edge_vectors():
    model = tiny_model()
    pos, types = cluster(5, seed=7, box=3.0)
    ei, vec = all_pairs(pos)
    vec = vec.detach().requires_grad_(True)
    # fast mode checks a random projection of the Jacobian against finite differences
    assert torch.autograd.gradcheck(lambda v: model(types, ei, v), (vec,), eps=1e-6, atol=1e-7, fast_mode=True)
    # and a central finite difference of a scalar readout along single coordinates
    readout = torch.randn(model.dim_out, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    (grad,) = torch.autograd.grad((model(types, ei, vec) @ readout).sum(), vec)
    for edge, axis in [(0, 0), (7, 2), (13, 1)]:
        dv = torch.zeros_like(vec)
        dv[edge, axis] = 1e-5
        with torch.no_grad():
            fd = ((model(types, ei, vec + dv) - model(types, ei, vec - dv)) @ readout).sum() / 2e-5
        assert abs(float(fd) - float(grad[edge, axis])) < 1e-7 * max(1.0, abs(float(fd)))


def test_double_backward_for_force_training():
    model = tiny_model()
    pos, types = cluster(6, seed=8)
    pos.requires_grad_(True)
    ei, vec = all_pairs(pos)
    e = model(types, ei, vec).sum()
    (f,) = torch.autograd.grad(e, pos, create_graph=True)
    loss = (f**2).sum()
    grads = torch.autograd.grad(loss, [p for p in model.parameters()], allow_unused=True)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0


def test_float32_matches_float64():
    model = tiny_model()
    pos, types = cluster()
    out64 = model(types, *all_pairs(pos))
    out32 = model.float()(types, *all_pairs(pos.float()))
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- the fused attention equals DeePMD's form
def _pad(x: torch.Tensor, sel: int) -> torch.Tensor:
    return torch.cat([x, x.new_zeros(x.shape[0], sel - x.shape[1], *x.shape[2:])], dim=1)


def test_gated_attention_equals_reference_padded_to_sel():
    torch.manual_seed(0)
    n_atoms, nnei, sel, ng2, d, h = 3, 5, 8, 6, 4, 3
    att = GatedPairAttention(ng2, d, h, sel, has_gate=True).double()
    g2 = torch.randn(n_atoms, nnei, ng2, dtype=torch.float64)
    h2 = torch.randn(n_atoms, nnei, 3, dtype=torch.float64)
    sw = torch.rand(n_atoms, nnei, dtype=torch.float64)
    sw[0, 3:] = 0.0  # empty slots
    h2[0, 3:] = 0.0
    ours = att(g2, h2, sw)
    # straightforward form on a layout padded to sel (DeePMD-kit's), q/k/v per head
    g2p, h2p, swp = _pad(g2, sel), _pad(h2, sel), _pad(sw, sel)
    qk = att.mapqk(g2p).view(n_atoms, sel, 2, h, d)
    q, k = qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(1, 2)
    a = q @ k.transpose(-1, -2) / math.sqrt(d) * (h2p @ h2p.transpose(1, 2)).unsqueeze(1)
    s2 = (swp[:, :, None] * swp[:, None, :]).unsqueeze(1)
    w = torch.softmax((a + 20.0) * s2 - 20.0, dim=-1) * s2 * (h2p @ h2p.transpose(1, 2)).unsqueeze(1) / 3**0.5
    v = att.mapv(g2p).view(n_atoms, sel, h, ng2).transpose(1, 2)
    ref = att.norm(att.head_map((w @ v).transpose(1, 2).reshape(n_atoms, sel, h * ng2)))[:, :nnei]
    torch.testing.assert_close(ours, ref)


def test_local_attention_equals_reference_padded_to_sel():
    torch.manual_seed(1)
    n_atoms, nnei, sel, ng1, d, h = 3, 5, 7, 6, 4, 2
    att = LocalAttention(ng1, d, h, sel).double()
    g1 = torch.randn(n_atoms, ng1, dtype=torch.float64)
    gg1 = torch.randn(n_atoms, nnei, ng1, dtype=torch.float64)
    sw = torch.rand(n_atoms, nnei, dtype=torch.float64)
    ours = att(g1, gg1, sw)
    gp, swp = _pad(gg1, sel), _pad(sw, sel)
    q = att.mapq(g1).view(n_atoms, h, 1, d)
    kv = att.mapkv(gp).view(n_atoms, sel, h, d + ng1).transpose(1, 2)
    a = (q @ kv[..., :d].transpose(-1, -2)).squeeze(2) / math.sqrt(d)
    w = torch.softmax((a + 20.0) * swp[:, None] - 20.0, dim=-1) * swp[:, None]
    ref = att.head_map((w.unsqueeze(2) @ kv[..., d:]).reshape(n_atoms, h * ng1))
    torch.testing.assert_close(ours, ref)


def test_dense_layout_width_follows_the_batch():
    ei = torch.tensor([[0, 0, 0, 1, 2, 2], [1, 2, 3, 0, 0, 1]])
    dist = torch.tensor([1.0, 5.0, 2.0, 1.0, 5.0, 3.0])
    nb = dense_neighbors(ei, dist, 4, rcut=4.0, sel=10)
    assert nb.nnei == 2  # atom 0 has two neighbours within 4 Å, atom 3 none
    assert nb.mask.tolist() == [[True, True], [True, False], [True, False], [False, False]]
    assert nb.index[0].tolist() == [1, 3] and nb.index[2, 0] == 1
    nb1 = dense_neighbors(ei, dist, 4, rcut=4.0, sel=1)
    assert nb1.nnei == 1 and nb1.index[0, 0] == 1  # the nearest one is kept


# ---------------------------------------------------------------- real water
def test_water_medium_runs_and_is_smooth_in_float32():
    if not DATA.exists():
        pytest.fail(f"missing test data {DATA}")
    from ase import Atoms
    from ase.neighborlist import neighbor_list

    coord = np.load(DATA / "set.000" / "coord.npy")[0].reshape(-1, 3)
    box = np.load(DATA / "set.000" / "box.npy")[0].reshape(3, 3)
    types = np.loadtxt(DATA / "type.raw", dtype=np.int64)
    atoms = Atoms(positions=coord, cell=box, pbc=True, numbers=np.where(types == 0, 8, 1))
    i, j, shift = neighbor_list("ijS", atoms, 6.0)
    order = np.argsort(i, kind="stable")
    i, j, shift = i[order], j[order], shift[order]
    vec = torch.tensor(atoms.positions[j] - atoms.positions[i] + shift @ atoms.cell.array, dtype=torch.float32)
    torch.manual_seed(0)
    model = build_dpa2("small", 2)
    vec.requires_grad_(True)
    out = model(torch.tensor(types), torch.tensor(np.stack([i, j])), vec)
    (g,) = torch.autograd.grad(out.sum(), vec)
    assert out.shape == (192, 136) and torch.isfinite(out).all() and torch.isfinite(g).all()
    # O and H environments are distinguished
    assert (out[types == 0].mean(0) - out[types == 1].mean(0)).abs().max() > 1e-3


def test_env_stats_from_data_normalise_the_environment():
    model = tiny_model()
    pos, types = cluster(9)
    ei, vec = all_pairs(pos)
    before = model(types, ei, vec)
    model.compute_env_stats([(types, ei, vec.detach())])
    std = model.env_std_repinit
    assert std.shape == (2, 2) and ((std > 0.01) & (std < 1.0)).all()
    # radial RMS of type-0 centres by hand: sum of s(r)^2 over their neighbours within 6 Å / (centres * sel)
    d = vec.detach().norm(dim=-1)
    sw = smooth_switch(d, 0.5, 6.0)
    sel_ = (types[ei[0]] == 0) & (d < 6.0)
    expected = ((sw[sel_] / d[sel_]) ** 2).sum() / (int((types == 0).sum()) * 120)
    torch.testing.assert_close(std[0, 0] ** 2, expected)
    after = model(types, ei, vec)
    assert (after - before).abs().max() > 1e-4
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)))
    torch.testing.assert_close(model(types, *all_pairs(pos @ q.T)), after)
