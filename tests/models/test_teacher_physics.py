"""The DPA-2 MEDIUM teacher with three heads passes the shared physics suite."""

from __future__ import annotations

import torch

from lam.models import build_model
from lam.testing.model_tests import ModelPhysicsTests

torch.set_num_threads(1)  # 2 threads on the shared 2-core CI machine are 15-30x slower


class TestTeacherPhysics(ModelPhysicsTests):
    n_atoms = 5

    def make_model(self, dtype: torch.dtype):
        return build_model("medium", type_map=["H", "C", "O"], heads=["pbe", "wb97x", "rpbe"], dtype=dtype,
                           seed=5)

    def test_three_heads_and_both_cutoffs(self, model64) -> None:
        assert model64.head_names == ["pbe", "wb97x", "rpbe"]
        assert model64.cutoffs == [4.0, 6.0]

