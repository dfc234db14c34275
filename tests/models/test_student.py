"""The compact se_e2_a student passes the shared physics suite, and its descriptor behaves as designed."""

from __future__ import annotations

import torch

from lam.models import build_model
from lam.models.descriptors.se_e2_a import SeE2A
from lam.testing.model_tests import ModelPhysicsTests


class TestStudentPhysics(ModelPhysicsTests):
    def make_model(self, dtype: torch.dtype):
        return build_model("student", type_map=["H", "C", "O"], heads=["pbe", "wb97x"], dtype=dtype, seed=3)
