"""Models: descriptors (DPA-2, se_e2_a), fitting heads, the multi-head :class:`Potential` and its builder.

Imports neither Lightning nor Hydra.
"""

from lam.models.builder import build_from_metadata, build_model, preset_names
from lam.models.direct_force import DirectForceHead
from lam.models.heads import FittingHead
from lam.models.potential import Potential

__all__ = ["DirectForceHead", "FittingHead", "Potential", "build_from_metadata", "build_model", "preset_names"]
