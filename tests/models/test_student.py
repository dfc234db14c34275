"""The compact se_e2_a student passes the shared physics suite, and its descriptor behaves as designed."""

from __future__ import annotations

import numpy as np
import torch

from lam.models import build_model
from lam.testing.model_tests import ModelPhysicsTests

torch.set_num_threads(1)  # 2 threads on the shared 2-core CI machine are 15-30x slower


class TestStudentPhysics(ModelPhysicsTests):
    def make_model(self, dtype: torch.dtype):
        return build_model("student", type_map=["H", "C", "O"], heads=["pbe", "wb97x"], dtype=dtype, seed=3)


class TestCompressedStudentPhysics(ModelPhysicsTests):
    """The tabulated embedding (inference mode) keeps every physical property exactly."""

    compiled_rtol = 1e-5  # TorchScript runs the network, eager the table

    def make_model(self, dtype: torch.dtype):
        model = build_model("student", type_map=["H", "O"], heads=["a", "b"], dtype=dtype, seed=4)
        model.compress()
        return model


def test_compression_is_accurate_and_follows_weight_changes() -> None:
    from ase.build import molecule

    from lam.data import keys as K
    from lam.md.calculator import atoms_to_batch
    from lam.testing.model_tests import random_periodic

    model = build_model("student", type_map=["H", "C", "O"], dtype=torch.float64, seed=2).eval()
    batch = atoms_to_batch([molecule("CH3CH2OH"), random_periodic(["H", "C", "O"], 8, seed=1)], model.rcut)
    ref = model(batch, compute_virial=True)
    assert model.compress()
    out = model(batch, compute_virial=True)
    torch.testing.assert_close(out[K.ENERGY], ref[K.ENERGY], rtol=1e-8, atol=0)
    for key in (K.FORCES, K.VIRIAL):
        assert (out[key] - ref[key]).abs().max() < 1e-5 * ref[key].abs().max()
    assert not torch.equal(out[K.FORCES], ref[K.FORCES])  # the table really is used
    with torch.no_grad():  # an optimiser step or load_state_dict: the table must follow
        model.descriptor.layers[0].weight.mul_(1.5)
    model.train()
    new_ref = model(batch)
    model.eval()
    new_out = model(batch)
    assert not torch.allclose(new_ref[K.ENERGY], ref[K.ENERGY])
    torch.testing.assert_close(new_out[K.ENERGY], new_ref[K.ENERGY], rtol=1e-8, atol=0)


def _water_student() -> torch.nn.Module:
    """A small float64 se_e2_a student for liquid water (fast: a few ms per force call on 192 atoms)."""
    return build_model("student", type_map=["O", "H"], heads=["water"], dtype=torch.float64, seed=1,
                       neurons=[8, 16, 32], axis_neuron=4, sel=48, rcut=4.0, rcut_smth=0.5,
                       fitting_neurons=[32, 32]).eval()


def _water_box(water_dir, index: int = 0):
    from lam.md.run import load_structure

    return load_structure(water_dir / "data_0", index=index)


def _network_and_table(model, batch) -> tuple[dict, dict]:
    """Outputs of the network (training mode runs it) and of the table (eval mode), same weights."""
    model.train()
    ref = model(batch)
    model.eval()
    return ref, model(batch)


def test_compressed_matches_network_on_water_after_statistics(water_dir) -> None:
    """Compressed before the statistics (the table must follow env_std / env_shift) and compared on the
    periodic water box: energies and forces agree to ~1e-6 relative, and the table is really used."""
    from lam.data import keys as K
    from lam.md.calculator import atoms_to_batch

    model = _water_student()
    assert model.compress()
    model.fit_descriptor_statistics([atoms_to_batch([_water_box(water_dir, 7)], model.rcut, dtype=model.dtype)])
    desc = model.descriptor
    assert desc.env_std < 0.5 and desc.env_shift > 0.1  # the statistics changed the embedding input
    batch = atoms_to_batch([_water_box(water_dir, 0)], model.rcut, dtype=model.dtype)
    ref, out = _network_and_table(model, batch)
    assert desc.table is not None and desc.table_stamp == desc._weights_stamp()  # re-tabulated, not dropped
    assert not torch.equal(out[K.FORCES], ref[K.FORCES])
    torch.testing.assert_close(out[K.ENERGY], ref[K.ENERGY], rtol=1e-8, atol=0)
    assert (out[K.FORCES] - ref[K.FORCES]).abs().max() < 1e-6 * ref[K.FORCES].abs().max()


def test_compressed_close_pairs_stay_conservative_and_accurate(water_dir) -> None:
    """Pairs closer than the table's r_min (as in a hot or badly trained MD run): an H at 0.3 Å from its O
    lies in the coarse extension and matches the network; one at 0.07 Å lies past the table, where G
    continues linearly. Forces are -dE/dr of the compressed energy (central differences), periodic box."""
    from lam.data import keys as K
    from lam.md.calculator import atoms_to_batch

    model = _water_student()
    box = _water_box(water_dir, 0)
    model.fit_descriptor_statistics([atoms_to_batch([box], model.rcut, dtype=model.dtype)])
    model.compress()
    oxygens, hydrogens = np.flatnonzero(box.numbers == 8), np.flatnonzero(box.numbers == 1)
    o1 = int(oxygens[0])
    o2 = int(oxygens[np.argmax(box.get_distances(o1, oxygens, mic=True))])  # far from the first pair
    h1, h2 = (int(hydrogens[np.argmin(box.get_distances(o, hydrogens, mic=True))]) for o in (o1, o2))

    def pull(atoms, o: int, h: int, dist: float) -> None:
        v = atoms.get_distance(o, h, mic=True, vector=True)
        atoms.positions[h] = atoms.positions[o] + v / (v @ v) ** 0.5 * dist

    near = box.copy()
    pull(near, o1, h1, 0.3)
    batch = atoms_to_batch([near], model.rcut, dtype=model.dtype)
    ref, out = _network_and_table(model, batch)
    # a cubic extrapolated from r_min = 0.5 Å was off by ~1e-3 relative here and far worse closer in
    torch.testing.assert_close(out[K.ENERGY], ref[K.ENERGY], rtol=1e-8, atol=0)
    assert (out[K.FORCES] - ref[K.FORCES]).abs().max() < 1e-5 * ref[K.FORCES].abs().max()

    pull(near, o2, h2, 0.07)
    forces = model(atoms_to_batch([near], model.rcut, dtype=model.dtype))[K.FORCES].detach()
    h = 1e-5
    for atom in (h1, h2, o1, o2):
        for axis in range(3):
            energies = []
            for sign in (1.0, -1.0):
                moved = near.copy()
                moved.positions[atom, axis] += sign * h
                e = model(atoms_to_batch([moved], model.rcut, dtype=model.dtype), compute_forces=False)[K.ENERGY]
                energies.append(float(e.detach()))
            fd = -(energies[0] - energies[1]) / (2 * h)
            assert abs(fd - float(forces[atom, axis])) < 1e-6 * max(1.0, abs(fd)), (atom, axis, fd)


def test_tabulated_embedding_is_c1_across_segments() -> None:
    """G(s) of the table is continuous with a continuous, exact derivative across the fine/coarse boundary
    and the end of the table (linear continuation beyond)."""
    model = _water_student()
    desc = model.descriptor
    desc.compress(r_min=0.5, n_intervals=64, extrapolate=3.0)
    s_max = desc.table_n_fine * desc.table_step
    s_end = s_max + (desc.table.shape[2] - desc.table_n_fine) * desc.table_coarse_step
    assert s_end >= 3.0 * s_max - 1e-12
    for edge in (s_max, s_end):
        s = torch.linspace(edge - 1e-3, edge + 1e-3, 2001, dtype=torch.float64).requires_grad_(True)
        pair = torch.full_like(s, 3, dtype=torch.long)
        g = desc.eager_embedding(s, pair)
        (grad,) = torch.autograd.grad(g.sum(), s)
        ds = float(s[1] - s[0])
        fd = (g[1:] - g[:-1]).sum(-1).detach() / ds
        mid = 0.5 * (grad[1:] + grad[:-1])
        assert (fd - mid).abs().max() < 1e-6 * max(1.0, float(grad.abs().max()))
        assert (g[1:] - g[:-1]).abs().max() < 10 * ds * max(1.0, float(grad.abs().max()))
    far = torch.tensor([2 * s_end, 3 * s_end], dtype=torch.float64)
    pair = torch.full_like(far, 3, dtype=torch.long)
    g = desc.eager_embedding(far, pair)
    g_end = desc.eager_embedding(torch.tensor([s_end], dtype=torch.float64), pair[:1])
    torch.testing.assert_close(g[1] - g[0], g[0] - g_end[0], rtol=1e-9, atol=1e-12)  # linear past the end


def test_fused_compressed_path_equals_autograd_path(water_dir, monkeypatch) -> None:
    """Compressed inference runs as one autograd node with a hand-written backward: same energy, forces and
    virial as the op-by-op autograd graph through the same table (float64), on a periodic water box and a
    molecule batch; it is really taken in eval mode and never in training mode."""
    from ase.build import molecule

    from lam.data import keys as K
    from lam.md.calculator import atoms_to_batch
    from lam.models.descriptors import se_e2_a

    model = build_model("student", type_map=["H", "C", "O"], heads=["a", "b"], dtype=torch.float64, seed=5)
    box = _water_box(water_dir, 1)
    batch = atoms_to_batch([box, molecule("CH3CH2OH")], model.rcut, dtype=model.dtype)
    batch[K.HEAD] = torch.tensor([0, 1])
    model.fit_descriptor_statistics([batch])
    model.compress()
    calls = {"n": 0}
    apply = se_e2_a._FusedCompressedSeE2A.apply

    def counting_apply(*args):
        calls["n"] += 1
        return apply(*args)

    monkeypatch.setattr(se_e2_a._FusedCompressedSeE2A, "apply", counting_apply)
    model.eval()
    fused = model(batch, compute_virial=True)
    assert calls["n"] == 1
    model.descriptor.fused = False
    plain = model(batch, compute_virial=True)
    assert calls["n"] == 1
    for key in (K.ENERGY, K.FORCES, K.VIRIAL):
        torch.testing.assert_close(fused[key], plain[key], rtol=1e-7, atol=1e-7)  # virial: sums with cancellation
    assert float(fused[K.FORCES].abs().max()) > 1e-3  # a non-trivial comparison
    model.descriptor.fused = True
    model.train()
    model(batch)
    assert calls["n"] == 1  # training runs the network
