"""The compact se_e2_a student passes the shared physics suite, and its descriptor behaves as designed."""

from __future__ import annotations

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
