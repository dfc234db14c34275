"""The compact se_e2_a student passes the shared physics suite, and its descriptor behaves as designed."""

from __future__ import annotations

import torch

from lam.models import build_model
from lam.testing.model_tests import ModelPhysicsTests

torch.set_num_threads(1)  # 2 threads on the shared 2-core CI machine are 15-30x slower


class TestStudentPhysics(ModelPhysicsTests):
    def make_model(self, dtype: torch.dtype):
        return build_model("student", type_map=["H", "C", "O"], heads=["pbe", "wb97x"], dtype=dtype, seed=3)
