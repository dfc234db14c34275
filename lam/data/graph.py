"""``AtomicGraph``: one structure as a PyG ``Data`` object with its neighbour list and (masked) labels.

Field names and sign conventions are those of :mod:`lam.data.keys`. Per-graph quantities (``cell``, ``pbc``,
``energy``, ``virial``, ``has_*``, ``head``, ``weight``) carry a leading dimension of 1, so that PyG's default
batching concatenates them into ``(G, ...)`` tensors; ``edge_index`` is offset by the number of atoms of the
preceding graphs. Labels a structure does not have are zeros with ``has_*`` False.

The module also converts between :class:`~lam.data.frame.Frame` and :class:`ase.Atoms`; ASE's stress
(eV/Å^3, ``σ = (1/V) ∂E/∂ε``) relates to our virial by ``W = -σ V``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress
from torch import Tensor
from torch_geometric.data import Batch, Data

from lam.data import keys as K
from lam.data.frame import Frame
from lam.data.neighbors import neighbor_list, neighbor_lists

__all__ = ["AtomicGraph", "atoms_to_frame", "collate", "collate_frames", "edge_vectors", "frame_to_atoms"]


def _stress_to_virial(stress: Any, volume: float, where: str) -> np.ndarray:
    """ASE stress (Voigt-6 or 3x3, eV/Å^3) → virial ``W = -σ V`` (3, 3) in eV."""
    s = np.asarray(stress, dtype=np.float64)
    if s.size == 6:
        s = voigt_6_to_full_3x3_stress(s.reshape(6))
    elif s.size == 9:
        s = s.reshape(3, 3)
    else:
        raise ValueError(f"{where}: field 'stress' must be Voigt-6 or 3x3, got shape {s.shape}")
    if not volume > 0:
        raise ValueError(f"{where}: field 'stress' given for a structure without a cell volume")
    return -s * volume


def atoms_to_frame(
    atoms: Atoms,
    energy_key: str | None = None,
    forces_key: str | None = None,
    stress_key: str | None = None,
) -> Frame:
    """Convert ``ase.Atoms`` to a :class:`Frame`, with the labels that are present.

    A label is read from ``atoms.info[energy_key]``, ``atoms.arrays[forces_key]`` or ``atoms.info[stress_key]``
    when that key is given (a named key that is missing raises ``KeyError``); otherwise from the results
    already stored in ``atoms.calc`` (``energy``, ``forces``, ``stress``), never by running the calculator.
    Stress uses ASE's convention (eV/Å^3, Voigt-6 or 3x3) and is stored as the virial ``W = -stress * V``.
    """
    where = f"structure {atoms.get_chemical_formula()}"
    results: dict[str, Any] = dict(getattr(atoms.calc, "results", None) or {})
    changed = atoms.calc.check_state(atoms) if results and getattr(atoms.calc, "atoms", None) is not None else []

    def pick(key: str | None, store: dict[str, Any], store_name: str, default: str) -> Any:
        if key is not None:
            if key not in store:
                raise KeyError(f"{where}: key {key!r} not found in atoms.{store_name} (has {sorted(store)})")
            return store[key]
        if default in results and changed:
            raise ValueError(
                f"{where}: field {default!r}: the calculator's results are stale ({', '.join(changed)} changed "
                "since they were computed); recompute them or name the label keys explicitly"
            )
        return results.get(default)

    energy = pick(energy_key, atoms.info, "info", "energy")
    forces = pick(forces_key, atoms.arrays, "arrays", "forces")
    stress = pick(stress_key, atoms.info, "info", "stress")
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    virial = None
    if stress is not None:
        virial = _stress_to_virial(stress, float(abs(np.linalg.det(cell))), where)
    return Frame(
        numbers=atoms.numbers.copy(),
        positions=atoms.positions.copy(),
        cell=cell.copy(),
        pbc=atoms.pbc.copy(),
        energy=energy,
        forces=None if forces is None else np.array(forces, dtype=np.float64),
        virial=virial,
    )


def frame_to_atoms(frame: Frame) -> Atoms:
    """Convert a :class:`Frame` to ``ase.Atoms``; labels go into a ``SinglePointCalculator``.

    The virial becomes ASE's stress ``-W / V`` (only for a cell with a volume).
    """
    atoms = Atoms(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc)
    results: dict[str, Any] = {}
    if frame.energy is not None:
        results["energy"] = float(frame.energy)
    if frame.forces is not None:
        results["forces"] = np.array(frame.forces, dtype=np.float64)
    if frame.virial is not None and frame.volume > 0:
        results["stress"] = full_3x3_to_voigt_6_stress(-np.asarray(frame.virial) / frame.volume)
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def _check_frame(frame: Frame, where: str) -> None:
    n = frame.n_atoms
    if frame.positions.shape != (n, 3):
        raise ValueError(f"{where}: field 'positions' has shape {frame.positions.shape}, expected ({n}, 3)")
    if frame.forces is not None and frame.forces.shape != (n, 3):
        raise ValueError(f"{where}: field 'forces' has shape {frame.forces.shape}, expected ({n}, 3)")
    for name in ("energy", "forces", "virial"):
        value = getattr(frame, name)
        if value is not None and not np.all(np.isfinite(value)):
            raise ValueError(f"{where}: field {name!r} has a non-finite value")


class AtomicGraph(Data):
    """One structure with its neighbour list and labels (see the module docstring for shapes).

    Build it with :meth:`from_frame` or :meth:`from_atoms`; batch several with :func:`collate` (or any PyG
    ``DataLoader``).
    """

    @classmethod
    def from_frame(
        cls,
        frame: Frame,
        cutoff: float,
        head: int = 0,
        weight: float = 1.0,
        dtype: torch.dtype = torch.float64,
        *,
        where: str = "",
    ) -> AtomicGraph:
        """Graph of ``frame`` with every edge shorter than ``cutoff`` (Å).

        Args:
            frame: the structure and its optional labels.
            cutoff: neighbour-list cutoff; use the largest cutoff the model reads.
            head: index of the model head this structure trains.
            weight: per-frame loss weight.
            dtype: floating dtype of positions, cell, shifts and labels.
            where: context for error messages, e.g. ``"water.h5: frame 12"``.
        """
        where = where or f"frame ({frame.n_atoms} atoms)"
        _check_frame(frame, where)
        nl = neighbor_list(frame.positions, frame.cell, frame.pbc, cutoff, where=where)
        n = frame.n_atoms

        def f(x: Any) -> Tensor:
            return torch.as_tensor(np.asarray(x, dtype=np.float64)).to(dtype)

        def flag(present: bool) -> Tensor:
            return torch.tensor([present], dtype=torch.bool)

        return cls(
            **{
                K.POSITIONS: f(frame.positions),
                K.NUMBERS: torch.as_tensor(frame.numbers, dtype=torch.int64),
                K.CELL: f(frame.cell).reshape(1, 3, 3),
                K.PBC: torch.as_tensor(frame.pbc, dtype=torch.bool).reshape(1, 3),
                K.EDGE_INDEX: torch.as_tensor(nl.edge_index, dtype=torch.int64),
                K.SHIFTS: f(nl.shifts),
                K.ENERGY: f([0.0 if frame.energy is None else frame.energy]),
                K.FORCES: f(np.zeros((n, 3)) if frame.forces is None else frame.forces),
                K.VIRIAL: f(np.zeros((3, 3)) if frame.virial is None else frame.virial).reshape(1, 3, 3),
                K.HAS_ENERGY: flag(frame.energy is not None),
                K.HAS_FORCES: flag(frame.forces is not None),
                K.HAS_VIRIAL: flag(frame.virial is not None),
                K.HEAD: torch.tensor([int(head)], dtype=torch.int64),
                K.WEIGHT: f([weight]),
            }
        )

    @classmethod
    def from_atoms(
        cls,
        atoms: Atoms,
        cutoff: float,
        head: int = 0,
        weight: float = 1.0,
        dtype: torch.dtype = torch.float64,
        energy_key: str | None = None,
        forces_key: str | None = None,
        stress_key: str | None = None,
    ) -> AtomicGraph:
        """Graph of ``ase.Atoms``; labels as in :func:`atoms_to_frame`."""
        frame = atoms_to_frame(atoms, energy_key=energy_key, forces_key=forces_key, stress_key=stress_key)
        return cls.from_frame(
            frame, cutoff, head=head, weight=weight, dtype=dtype, where=f"structure {atoms.get_chemical_formula()}"
        )

    def _single(self) -> None:
        if self[K.CELL].shape[0] != 1:
            raise ValueError(f"expected a single graph, got a batch of {self[K.CELL].shape[0]}; index it first")

    def to_frame(self) -> Frame:
        """Back to a numpy :class:`Frame` (float64), keeping only the labels flagged present."""
        self._single()

        def a(key: str) -> np.ndarray:
            return self[key].detach().cpu().to(torch.float64).numpy()

        return Frame(
            numbers=self[K.NUMBERS].cpu().numpy(),
            positions=a(K.POSITIONS),
            cell=a(K.CELL)[0],
            pbc=self[K.PBC].cpu().numpy()[0],
            energy=float(a(K.ENERGY)[0]) if bool(self[K.HAS_ENERGY][0]) else None,
            forces=a(K.FORCES) if bool(self[K.HAS_FORCES][0]) else None,
            virial=a(K.VIRIAL)[0] if bool(self[K.HAS_VIRIAL][0]) else None,
        )

    def to_atoms(self) -> Atoms:
        """``ase.Atoms`` with a ``SinglePointCalculator`` holding the labels that are present."""
        return frame_to_atoms(self.to_frame())


def collate(graphs: Sequence[AtomicGraph]) -> Batch:
    """Batch graphs: atoms and edges are concatenated, ``edge_index`` offset, per-graph fields stacked."""
    graphs = list(graphs)
    if not graphs:
        raise ValueError("collate needs at least one graph")
    return Batch.from_data_list(graphs)


# Non-periodic frames with at most this many atoms share one neighbour search in :func:`collate_frames`.
_SHARED_SEARCH_MAX_ATOMS = 256


def _open_frames_edges(frames: Sequence[Frame], cutoff: float, where: str) -> list[np.ndarray]:
    """Edge indices (local atom numbering) of non-periodic frames from ONE vesin search.

    The molecules are translated onto a cubic grid whose spacing exceeds the largest molecule's extent plus the
    cutoff, so atoms of different frames are never neighbours; the sorted global edge list then splits into each
    frame's own sorted list. Translations change distances only by rounding (~1e-14 Å): the edges are those of
    the per-frame search except, in principle, a pair within that distance of the cutoff.
    """
    counts = np.array([f.n_atoms for f in frames], dtype=np.int64)
    ptr = np.concatenate([[0], np.cumsum(counts)])
    positions = np.concatenate([f.positions for f in frames]).astype(np.float64, copy=False)
    starts = ptr[:-1][counts > 0]
    lows = np.zeros((len(frames), 3))
    spans = np.zeros((len(frames), 3))
    if positions.shape[0]:
        lows[counts > 0] = np.minimum.reduceat(positions, starts, axis=0)
        spans[counts > 0] = np.maximum.reduceat(positions, starts, axis=0) - lows[counts > 0]
    spacing = float(spans.max()) + cutoff + 1.0
    side = max(1, int(np.ceil(len(frames) ** (1.0 / 3.0) - 1e-9)))
    cells = np.arange(len(frames))
    grid = np.stack([cells % side, (cells // side) % side, cells // (side * side)], axis=1) * spacing
    positions = positions + np.repeat(grid - lows, counts, axis=0)
    nl = neighbor_lists(positions, np.zeros((3, 3)), False, [cutoff], where=where)[0]
    owner = np.searchsorted(ptr, nl.edge_index[0], side="right") - 1
    bounds = np.searchsorted(owner, np.arange(len(frames) + 1))
    return [nl.edge_index[:, bounds[k]:bounds[k + 1]] - ptr[k] for k in range(len(frames))]


def collate_frames(
    frames: Sequence[Frame],
    cutoff: float,
    head: int | Sequence[int] = 0,
    weight: float | Sequence[float] = 1.0,
    dtype: torch.dtype = torch.float64,
    *,
    labels: bool = True,
    where: str = "frame",
) -> Batch:
    """One batch of ``frames``, equal to ``collate([AtomicGraph.from_frame(f, cutoff, ...) for f in frames])``.

    Much faster for many small molecules: non-periodic frames of up to 256 atoms share a single neighbour
    search (see :func:`_open_frames_edges`) and the batch tensors are built at once instead of graph by graph.
    Periodic (or larger) frames get their own search as in :meth:`AtomicGraph.from_frame`. ``head`` and
    ``weight`` are one value for all frames or one per frame; error messages name ``f"{where} {index}"``.
    ``labels=False`` builds a label-free batch (every label zero and flagged absent, as for frames without
    labels) without reading or checking the frames' labels: the fast path for model evaluation.
    """
    frames = list(frames)
    n_graphs = len(frames)
    if n_graphs == 0:
        raise ValueError("collate_frames needs at least one frame")
    heads = np.broadcast_to(np.asarray(head, dtype=np.int64), (n_graphs,)).copy()
    weights = np.broadcast_to(np.asarray(weight, dtype=np.float64), (n_graphs,)).copy()
    for k, frame in enumerate(frames):
        if labels:
            _check_frame(frame, f"{where} {k}")
        elif np.shape(frame.positions) != (frame.n_atoms, 3):
            raise ValueError(f"{where} {k}: field 'positions' has shape {np.shape(frame.positions)}, "
                             f"expected ({frame.n_atoms}, 3)")
    all_positions = np.concatenate([frame.positions for frame in frames])
    if not np.all(np.isfinite(all_positions)):
        for k, frame in enumerate(frames):  # the per-frame search names the frame and the atom
            neighbor_list(frame.positions, frame.cell, frame.pbc, cutoff, where=f"{where} {k}")
    edges: list[np.ndarray | None] = [None] * n_graphs
    shifts: list[np.ndarray | None] = [None] * n_graphs
    shared = [k for k, f in enumerate(frames) if not np.any(f.pbc) and f.n_atoms <= _SHARED_SEARCH_MAX_ATOMS]
    if shared:
        for k, e in zip(shared, _open_frames_edges([frames[k] for k in shared], cutoff, where)):
            edges[k], shifts[k] = e, np.zeros((e.shape[1], 3), dtype=np.int64)
    for k, frame in enumerate(frames):
        if edges[k] is None:
            nl = neighbor_list(frame.positions, frame.cell, frame.pbc, cutoff, where=f"{where} {k}")
            edges[k], shifts[k] = nl.edge_index, nl.shifts

    counts = np.array([f.n_atoms for f in frames], dtype=np.int64)
    ptr = np.concatenate([[0], np.cumsum(counts)])
    n_edges = np.array([e.shape[1] for e in edges], dtype=np.int64)
    edge_ptr = np.concatenate([[0], np.cumsum(n_edges)])

    def f(x: Any) -> Tensor:
        return torch.as_tensor(np.asarray(x, dtype=np.float64)).to(dtype)

    def label(name: str, shape: tuple[int, ...], per_atom: bool) -> tuple[Tensor, Tensor]:
        if not labels:
            n = int(ptr[-1]) if per_atom else n_graphs
            return torch.zeros((n, *shape), dtype=dtype), torch.zeros(n_graphs, dtype=torch.bool)
        values = [getattr(fr, name) for fr in frames]
        present = torch.as_tensor([v is not None for v in values], dtype=torch.bool)
        rows = [np.zeros((fr.n_atoms, *shape) if per_atom else shape) if v is None else
                np.asarray(v, dtype=np.float64).reshape((fr.n_atoms, *shape) if per_atom else shape)
                for fr, v in zip(frames, values)]
        stacked = np.concatenate(rows) if per_atom else np.stack(rows)
        return f(stacked), present

    energy, has_energy = label("energy", (), per_atom=False)
    forces, has_forces = label("forces", (3,), per_atom=True)
    virial, has_virial = label("virial", (3, 3), per_atom=False)
    edge_index = np.concatenate([e + ptr[k] for k, e in enumerate(edges)], axis=1)
    fields = {
        K.POSITIONS: f(all_positions),
        K.NUMBERS: torch.as_tensor(np.concatenate([np.asarray(fr.numbers) for fr in frames]), dtype=torch.int64),
        K.CELL: f(np.stack([np.asarray(fr.cell, dtype=np.float64).reshape(3, 3) for fr in frames])),
        K.PBC: torch.as_tensor(np.stack([np.asarray(fr.pbc, dtype=bool).reshape(3) for fr in frames])),
        K.EDGE_INDEX: torch.as_tensor(edge_index, dtype=torch.int64),
        K.SHIFTS: f(np.concatenate(shifts)),
        K.ENERGY: energy, K.FORCES: forces, K.VIRIAL: virial,
        K.HAS_ENERGY: has_energy, K.HAS_FORCES: has_forces, K.HAS_VIRIAL: has_virial,
        K.HEAD: torch.as_tensor(heads), K.WEIGHT: f(weights),
        K.BATCH: torch.repeat_interleave(torch.arange(n_graphs), torch.as_tensor(counts)),
        K.PTR: torch.as_tensor(ptr),
    }
    out = Batch(_base_cls=AtomicGraph)
    for key, value in fields.items():
        out[key] = value
    # what Batch.from_data_list records, so that indexing and ``to_data_list`` work as on a collated batch
    node, graph = torch.as_tensor(ptr), torch.arange(n_graphs + 1)
    slices = {K.EDGE_INDEX: torch.as_tensor(edge_ptr), K.SHIFTS: torch.as_tensor(edge_ptr)}
    slices.update({key: node for key in (K.POSITIONS, K.NUMBERS, K.FORCES)})
    slices.update({key: graph for key in fields if key not in slices and key not in (K.BATCH, K.PTR)})
    out._slice_dict = slices
    out._inc_dict = {key: torch.as_tensor(ptr[:-1]) if key == K.EDGE_INDEX else torch.zeros(n_graphs, dtype=torch.int64)
                     for key in slices}
    out._num_graphs = n_graphs
    return out


def edge_vectors(pos: Tensor, edge_index: Tensor, shifts: Tensor, cell: Tensor, batch: Tensor | None = None) -> Tensor:
    """Edge vectors ``r_ij = pos[j] - pos[i] + shifts_ij @ cell[graph(i)]`` (E, 3).

    Differentiable with respect to ``pos`` and ``cell``. ``cell`` is (G, 3, 3) (or (3, 3) for one graph);
    ``batch`` (N,) maps atoms to graphs (``None``: every atom is in graph 0).
    """
    i, j = edge_index[0], edge_index[1]
    vec = pos.index_select(0, j) - pos.index_select(0, i)
    if shifts.numel() == 0:
        return vec
    if cell.dim() == 2:
        cell = cell.unsqueeze(0)
    shifts = shifts.to(pos.dtype)
    if batch is None or cell.shape[0] == 1:
        return vec + shifts @ cell[0]
    edge_cell = cell.index_select(0, batch.index_select(0, i))  # (E, 3, 3)
    return vec + torch.bmm(shifts.unsqueeze(1), edge_cell).squeeze(1)
