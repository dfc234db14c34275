"""ASE calculator for a :class:`lam.models.Potential`, optionally with a committee for model deviation.

Results: ``energy``, ``free_energy`` (eV), ``forces`` (eV/Å), ``energies`` (per atom), ``stress`` (ASE sign,
eV/Å^3, Voigt order xx yy zz yz xz xy; periodic cells only) and, with a committee, ``energy_std`` (eV),
``forces_std`` (N,) per-atom force deviation ``sqrt(<|F_i - <F_i>|^2>)`` and ``max_force_std`` (its maximum,
DeePMD's ε_F). For a model with a direct-force head, ``direct_forces`` (N, 3) is the head's non-conservative
force: asked for alone it costs one descriptor pass without any backward pass (the fast force of multiple
time stepping); asked for together with ``forces`` both come from one pass. The neighbour list is a Verlet
list (:class:`lam.data.neighbors.VerletList`): searched with vesin at the model's cutoff plus ``skin`` and
filtered at the current positions, giving exactly the edges of a fresh search, until some atom has moved
more than ``skin / 2``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from lam.data import keys as K
from lam.data.neighbors import VerletList, neighbor_list
from lam.models.potential import Potential


def atoms_to_batch(atoms_list: Sequence[Atoms], cutoff: float, head: int | Sequence[int] = 0,
                   dtype: torch.dtype = torch.float64, device: torch.device | str | None = None,
                   verlet: Sequence[VerletList] | None = None) -> dict[str, torch.Tensor]:
    """Collate ASE structures into a batch dict (fields of :mod:`lam.data.keys`) with edges within ``cutoff``.

    ``verlet``: one :class:`VerletList` per structure (its cutoff at least ``cutoff``), kept across calls so
    that the search is skipped while the atoms move little (same edges as a fresh search at the list's
    cutoff). ``None``: a fresh search within ``cutoff``.
    """
    heads = [int(head)] * len(atoms_list) if isinstance(head, int) else [int(h) for h in head]
    if len(heads) != len(atoms_list):
        raise ValueError(f"got {len(heads)} head indices for {len(atoms_list)} structures")
    if verlet is not None:
        if len(verlet) != len(atoms_list):
            raise ValueError(f"got {len(verlet)} Verlet lists for {len(atoms_list)} structures")
        short = [v.cutoff for v in verlet if v.cutoff < cutoff]
        if short:
            raise ValueError(f"Verlet list cutoff {short[0]} is below the model cutoff {cutoff}")
    pos, numbers, cells, pbcs, edges, shifts, seg = [], [], [], [], [], [], []
    offset = 0
    for g, atoms in enumerate(atoms_list):
        cell = np.asarray(atoms.cell.array, dtype=np.float64)
        where = f"structure {g} ({atoms.symbols})"
        nl = (neighbor_list(atoms.positions, cell, atoms.pbc, cutoff, where=where) if verlet is None
              else verlet[g].update(atoms.positions, cell, atoms.pbc, where=where))
        pos.append(atoms.positions)
        numbers.append(atoms.numbers)
        cells.append(cell)
        pbcs.append(atoms.pbc)
        edges.append(nl.edge_index + offset)
        shifts.append(nl.shifts)
        seg.append(np.full(len(atoms), g))
        offset += len(atoms)
    ptr = np.cumsum([0] + [len(a) for a in atoms_list])

    def t(x: Any, dt: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(x), dtype=dt, device=device)

    return {
        K.POSITIONS: t(np.concatenate(pos), dtype),
        K.NUMBERS: t(np.concatenate(numbers), torch.long),
        K.CELL: t(np.stack(cells), dtype),
        K.PBC: t(np.stack(pbcs), torch.bool),
        K.EDGE_INDEX: t(np.concatenate(edges, axis=1), torch.long),
        K.SHIFTS: t(np.concatenate(shifts), dtype),
        K.BATCH: t(np.concatenate(seg), torch.long),
        K.PTR: t(ptr, torch.long),
        K.HEAD: t(heads, torch.long),
    }


class LAMCalculator(Calculator):
    """ASE calculator around a :class:`Potential`.

    Args:
        model: the potential that gives energy, forces and stress.
        head: head name (required when the model has several heads).
        committee: optional list of potentials; the deviation results are computed over the committee, with
            ``model`` included once (whether or not it is in the list).
        device: torch device (default: the model's).
        compress: tabulate the descriptor's embedding for speed where supported (se_e2_a; see
            ``Potential.compress``; training mode and saved weights are unaffected).
        skin: Verlet skin in Å of the neighbour list (searched at the cutoff + ``skin``, searched again once
            an atom has moved more than ``skin / 2``); 0 searches on every call. Results do not depend on it.
        direct_dtype: precision of the direct forces (e.g. ``torch.float32`` next to a float64 model): a copy
            of the model in that dtype computes every ``direct_forces`` result, so that the cheap inner force
            of multiple time stepping runs in single precision while energies and ``-dE/dr`` (the
            conservative correction, the logged energy) stay in the model's precision. ``None``: the model's.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress", "energy_std",
                              "forces_std", "max_force_std", "direct_forces"]

    def __init__(self, model: Potential, head: str | None = None, committee: list[Potential] | None = None,
                 device: torch.device | str | None = None, compress: bool = True,
                 direct_dtype: torch.dtype | str | None = None, skin: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.skin = float(skin)
        self._verlet: dict[float, VerletList] = {}
        from lam.runtime import configure_allocator

        configure_allocator()  # keep large freed tensors in the heap (see lam.runtime)
        if head is None:
            if len(model.head_names) > 1:
                raise ValueError(f"the model has heads {model.head_names}: pass head=...")
            head = model.head_names[0]
        if head not in model.head_names:
            raise ValueError(f"no head {head!r}; the model has heads {model.head_names}")
        self.device = torch.device(device) if device is not None else model.device
        self.model = model.to(self.device).eval()
        self.neighbor_list(self.model.rcut)  # validates ``skin`` now rather than at the first calculation
        self.head = head
        members = list(committee or [])
        if members and not any(m is model for m in members):
            members = [model, *members]
        for m in members:
            m.to(self.device).eval()
            if head not in m.head_names:
                raise ValueError(f"committee member lacks head {head!r} (it has {m.head_names})")
        self.committee = members
        if compress:
            for m in {id(m): m for m in [model, *members]}.values():
                m.compress()
        self.direct_model: Potential | None = None
        self.features: torch.Tensor | None = None  # descriptor features of the last full evaluation
        if direct_dtype is not None:
            dd = direct_dtype if isinstance(direct_dtype, torch.dtype) else \
                getattr(torch, str(direct_dtype).replace("torch.", ""))
            if not isinstance(dd, torch.dtype) or not dd.is_floating_point:
                raise ValueError(f"direct_dtype must be a floating dtype such as float32, got {direct_dtype!r}")
            if dd != self.model.dtype and getattr(self.model, "direct_force_head", None) is not None:
                self.direct_model = copy.deepcopy(self.model).to(dd).eval()

    def neighbor_list(self, cutoff: float) -> VerletList:
        """The calculator's Verlet list for ``cutoff`` (one per distinct model cutoff, shared by the models)."""
        if cutoff not in self._verlet:
            self._verlet[cutoff] = VerletList(cutoff, skin=self.skin)
        return self._verlet[cutoff]

    def _batch(self, model: Potential, atoms: Atoms) -> dict[str, torch.Tensor]:
        return atoms_to_batch([atoms], model.rcut, head=model.head_names.index(self.head), dtype=model.dtype,
                              device=self.device, verlet=[self.neighbor_list(model.rcut)])

    def _evaluate(self, model: Potential, atoms: Atoms, stress: bool, direct: bool = False
                  ) -> dict[str, np.ndarray]:
        batch = self._batch(model, atoms)
        keep = model is self.model and self.has_direct_forces
        out = model(batch, compute_forces=True, compute_virial=stress, compute_direct=direct, return_features=keep)
        if keep:
            self.features = out.pop(K.FEATURES)
        return {k: v.detach().cpu().double().numpy() for k, v in out.items()}

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """What changed since the last calculation, among what the model reads (positions, numbers, cell, pbc).

        Same answers as ASE's ``compare_atoms`` for those four, at a fraction of its cost (one max-abs
        difference per array instead of ``allclose``; ~0.6 ms per MD step on 192 atoms); initial charges and
        magnetic moments are not inputs of the model and are ignored.
        """
        if self.atoms is None:
            return list(all_changes)
        old, changes = self.atoms, []
        for name, a, b in (("positions", old.positions, atoms.positions), ("cell", old.cell.array, atoms.cell.array)):
            if a.shape != b.shape or (a.size and float(np.abs(a - b).max()) > tol):
                changes.append(name)
        for name, a, b in (("numbers", old.numbers, atoms.numbers), ("pbc", old.pbc, atoms.pbc)):
            if not np.array_equal(a, b):
                changes.append(name)
        return changes

    @property
    def has_direct_forces(self) -> bool:
        """Whether the model has a direct-force head (so ``direct_forces`` can be computed)."""
        return getattr(self.model, "direct_force_head", None) is not None

    def _evaluate_direct(self, atoms: Atoms) -> np.ndarray:
        """Direct forces alone: one descriptor pass, no autograd graph (in ``direct_dtype`` if set)."""
        model = self.direct_model if self.direct_model is not None else self.model
        batch = self._batch(model, atoms)
        with self._direct_mode(model):
            out = model(batch, compute_forces=False, compute_direct=True)
        return out[K.DIRECT_FORCES].detach().cpu().double().numpy()

    @staticmethod
    def _direct_mode(model: Potential) -> Any:
        # a gradient head (kind="energy") differentiates its own energy, which inference mode forbids
        return torch.no_grad() if getattr(model.direct_force_head, "is_gradient", False) else torch.inference_mode()

    def frozen_direct_forces(self, atoms: Atoms, features: torch.Tensor | None = None) -> np.ndarray:
        """Direct forces at ``atoms``' positions from given descriptor ``features`` (default: those of the last
        full evaluation, ``self.features``).

        No descriptor pass: only the direct head runs, on a neighbour list at the head's cutoff. This is the
        inner force of multiple time stepping with ``inner="frozen"``, which keeps a copy of the features and
        refreshes it from a conservative evaluation every few outer steps. For a head of ``kind="energy"``
        the result is the exact gradient of a potential as long as the features stay the same.
        """
        if not self.has_direct_forces:
            raise PropertyNotImplementedError("frozen direct forces need a model with a direct-force head")
        features = self.features if features is None else features
        if features is None or features.shape[0] != len(atoms):
            raise RuntimeError("frozen_direct_forces needs the features of an earlier full evaluation of these "
                               "atoms (get_forces first)")
        model = self.direct_model if self.direct_model is not None else self.model
        head = model.direct_force_head
        batch = atoms_to_batch([atoms], float(head.rcut), head=model.head_names.index(self.head), dtype=model.dtype,
                               device=self.device, verlet=[self.neighbor_list(float(head.rcut))])
        with self._direct_mode(model):
            forces = model.direct_forces_from_features(features, batch)
        return forces.detach().cpu().double().numpy()

    def calculate(self, atoms: Atoms | None = None, properties: Sequence[str] = ("energy",),
                  system_changes: Sequence[str] = all_changes) -> None:
        """Compute energy, forces, (stress), (direct forces) and, with a committee, the deviations."""
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        want_direct = "direct_forces" in properties
        if want_direct and not self.has_direct_forces:
            raise PropertyNotImplementedError("direct_forces needs a model with a direct-force head")
        if want_direct and set(properties) == {"direct_forces"}:
            self.results = {"direct_forces": self._evaluate_direct(atoms)}
            return
        want_stress = "stress" in properties
        if want_stress and not atoms.pbc.all():
            raise PropertyNotImplementedError("stress needs a cell periodic in all three directions")
        shared = want_direct and self.direct_model is None  # one pass gives both force kinds
        out = self._evaluate(self.model, atoms, want_stress, direct=shared)
        energy = float(out[K.ENERGY][0])
        self.results = {"energy": energy, "free_energy": energy, "energies": out[K.ATOMIC_ENERGY],
                        "forces": out[K.FORCES]}
        if want_direct:
            self.results["direct_forces"] = out[K.DIRECT_FORCES] if shared else self._evaluate_direct(atoms)
        if want_stress:
            self.results["stress"] = full_3x3_to_voigt_6_stress(out[K.STRESS][0])
        if self.committee:
            outs = [out if m is self.model else self._evaluate(m, atoms, False) for m in self.committee]
            energies = np.array([o[K.ENERGY][0] for o in outs])
            forces = np.stack([o[K.FORCES] for o in outs])  # (M, N, 3)
            dev = forces - forces.mean(0)
            forces_std = np.sqrt((dev**2).sum(-1).mean(0))
            self.results["energy_std"] = float(energies.std())
            self.results["forces_std"] = forces_std
            self.results["max_force_std"] = float(forces_std.max()) if len(forces_std) else 0.0
