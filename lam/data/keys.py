"""Field names shared by the data layer, the models and the trainer.

Conventions (all units eV, Å):

* ``pos`` (N, 3) Cartesian positions; ``numbers`` (N,) atomic numbers (int64).
* ``cell`` (G, 3, 3), rows are lattice vectors; zeros for a non-periodic graph. ``pbc`` (G, 3) bool.
* ``edge_index`` (2, E): row 0 is the centre atom ``i``, row 1 the neighbour ``j``; edges are sorted by
  ``i``. ``shifts`` (E, 3) integer cell shifts (stored as float), so that the edge vector is
  ``r_ij = pos[j] - pos[i] + shifts @ cell[graph(i)]``.
* ``energy`` (G,) total energy; ``forces`` (N, 3); ``virial`` (G, 3, 3) with DeePMD-kit's sign,
  ``W = -dE/d(strain)``, so that the ASE stress is ``-W / volume``.
* Labels that a frame does not have are stored as zeros and flagged False in ``has_energy``,
  ``has_forces`` or ``has_virial`` (G,) — they are masked in the loss, never filled in.
* ``head`` (G,) int64 index into the model's head list; ``weight`` (G,) per-frame loss weight.
"""

POSITIONS = "pos"
NUMBERS = "numbers"
CELL = "cell"
PBC = "pbc"
EDGE_INDEX = "edge_index"
SHIFTS = "shifts"
BATCH = "batch"
PTR = "ptr"

ENERGY = "energy"
FORCES = "forces"
VIRIAL = "virial"
STRESS = "stress"
ATOMIC_ENERGY = "atomic_energy"
DIRECT_FORCES = "direct_forces"
FEATURES = "features"  # descriptor features (N, D), returned on request

HAS_ENERGY = "has_energy"
HAS_FORCES = "has_forces"
HAS_VIRIAL = "has_virial"

HEAD = "head"
WEIGHT = "weight"

LABEL_KEYS = (ENERGY, FORCES, VIRIAL)
