"""Re-fit a head's element energy references on downstream data.

A head predicts ``E = Σ_Z n_Z e_Z + E_net`` (see :mod:`lam.models.heads`): element references ``e_Z`` plus
what the network adds. Downstream DFT (another code, pseudopotentials, functional) shifts energies by an
amount that is, to first order, a constant per element. Before finetuning we therefore solve

    min_e  Σ_f ( E_DFT,f − E_net,f − Σ_Z n_fZ e_Z )²

by least squares on the element counts of the downstream frames, with ``E_net = E_model − Σ n_Z e_Z^current``
("the model without its reference"). It reuses the streaming QR solver of :mod:`lam.data.stats`.

Compositions with fixed ratios (pure water: H:O always 2:1) leave some combination of references
undetermined. We solve for the *change* ``e − e_prior`` with the minimum-norm solution, so that the
undetermined combination keeps its prior value (the head's current references, or those of the head it was
copied from) instead of an arbitrary one; the predicted energies of the data are the same either way.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from lam.data.frame import Frame

__all__ = ["ReferenceFit", "element_counts", "model_energies", "refit_element_references"]

log = logging.getLogger(__name__)


@dataclass
class ReferenceFit:
    """Outcome of :func:`refit_element_references` (energies in eV).

    ``before`` / ``after``: references per element; ``residual_rms_per_atom_before`` / ``_after``: RMS over
    frames of ``(E_DFT − E_model) / n`` with the old and the new references; ``degenerate``: combinations of
    elements the data cannot separate (kept at the prior); ``absent``: type-map elements not in the data
    (kept at the prior).
    """

    head: str
    before: dict[str, float]
    after: dict[str, float]
    n_frames: int
    residual_rms_per_atom_before: float
    residual_rms_per_atom_after: float
    degenerate: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary."""
        return {"head": self.head, "before": self.before, "after": self.after, "n_frames": self.n_frames,
                "residual_rms_per_atom_before": self.residual_rms_per_atom_before,
                "residual_rms_per_atom_after": self.residual_rms_per_atom_after,
                "degenerate": list(self.degenerate), "absent": list(self.absent)}


def element_counts(frames: Sequence[Frame], type_map: Sequence[str]) -> np.ndarray:
    """(F, T) number of atoms of each type-map element in each frame; an unknown element raises."""
    from ase.data import atomic_numbers

    lookup = np.full(119, -1, dtype=np.int64)
    for k, symbol in enumerate(type_map):
        lookup[atomic_numbers[symbol]] = k
    counts = np.zeros((len(frames), len(type_map)), dtype=np.float64)
    for f, frame in enumerate(frames):
        types = lookup[frame.numbers]
        if (types < 0).any():
            from ase.data import chemical_symbols

            bad = sorted({chemical_symbols[int(z)] for z in frame.numbers[types < 0]})
            raise ValueError(f"frame {f}: element(s) {bad} are not in the model's type map {list(type_map)}")
        counts[f] = np.bincount(types, minlength=len(type_map))
    return counts


@torch.no_grad()
def _energy_batch(model: nn.Module, graphs: list[Any], head: str) -> np.ndarray:
    from lam.data.graph import collate

    device = next(model.parameters()).device
    out = model(collate(graphs).to(device), compute_forces=False, head=head)
    return out["energy"].detach().double().cpu().numpy()


def model_energies(model: nn.Module, frames: Iterable[Frame], head: str, batch_size: int = 8) -> np.ndarray:
    """Total energies (F,) that head ``head`` of ``model`` predicts for ``frames`` (no forces)."""
    from lam.data.graph import AtomicGraph

    was_training = model.training
    model.eval()
    index = list(model.head_names).index(head)
    out: list[np.ndarray] = []
    graphs: list[Any] = []
    for k, frame in enumerate(frames):
        graphs.append(AtomicGraph.from_frame(frame, model.rcut, head=index, dtype=model.dtype, where=f"frame {k}"))
        if len(graphs) == batch_size:
            out.append(_energy_batch(model, graphs, head))
            graphs = []
    if graphs:
        out.append(_energy_batch(model, graphs, head))
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0)


def _references(model: nn.Module, head: str) -> np.ndarray:
    return model.heads[head].element_energy.detach().double().cpu().numpy().copy()


def refit_element_references(model: nn.Module, head: str, frames: Sequence[Frame],
                             prior: Mapping[str, float] | None = None, batch_size: int = 8,
                             apply: bool = True) -> ReferenceFit:
    """Least-squares element references of ``head`` on labelled ``frames`` (set on the model if ``apply``).

    Args:
        model: a :class:`~lam.models.potential.Potential`.
        head: the head whose references are fitted.
        frames: downstream frames; those without an energy label are skipped.
        prior: references that the fit keeps along directions the data cannot determine (default: the head's
            current references).
        batch_size: frames per forward pass.
        apply: write the new references into the head.
    """
    from lam.data.stats import ChunkArrays, DegenerateReferenceWarning, ElementReferenceAccumulator

    if head not in model.head_names:
        raise ValueError(f"no head named {head!r}; the model has {model.head_names}")
    type_map = list(model.type_map)
    labelled = [f for f in frames if f.energy is not None]
    if not labelled:
        raise ValueError(f"cannot re-fit the element references of head {head!r}: no frame has an energy label")
    current = _references(model, head)
    prior_vec = current.copy() if prior is None else np.array([float(prior.get(s, 0.0)) for s in type_map])
    counts = element_counts(labelled, type_map)
    n_atoms = counts.sum(axis=1)
    e_dft = np.array([f.energy for f in labelled], dtype=np.float64)
    e_net = model_energies(model, labelled, head, batch_size) - counts @ current  # model without its reference
    target = e_dft - e_net - counts @ prior_vec  # what the change of the references has to explain

    acc = ElementReferenceAccumulator()
    acc.add_chunk(ChunkArrays(numbers=np.concatenate([f.numbers for f in labelled]),
                              n_atoms=n_atoms.astype(np.int64), energy=target,
                              has_energy=np.ones(len(labelled), dtype=bool), forces=None,
                              has_forces=np.zeros(len(labelled), dtype=bool)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateReferenceWarning)  # expected (water); reported below
        stats = acc.solve(elements=type_map)
    delta = stats.reference_vector(type_map)
    new = prior_vec + delta
    before_rms = math.sqrt(float(np.mean(np.square((e_dft - e_net - counts @ current) / n_atoms))))
    after_rms = math.sqrt(float(np.mean(np.square((e_dft - e_net - counts @ new) / n_atoms))))
    fit = ReferenceFit(head=head, before={s: float(v) for s, v in zip(type_map, current)},
                       after={s: float(v) for s, v in zip(type_map, new)}, n_frames=len(labelled),
                       residual_rms_per_atom_before=before_rms, residual_rms_per_atom_after=after_rms,
                       degenerate=list(stats.degenerate), absent=list(stats.absent_elements))
    if fit.degenerate:
        log.info("head %s: the data cannot separate the references of %s; that combination keeps its prior value",
                 head, "; ".join(fit.degenerate))
    if apply:
        model.set_element_energies(head, fit.after)
    log.info("head %s: element references re-fitted on %d frames, residual RMS %.1f → %.1f meV/atom", head,
             fit.n_frames, 1000 * before_rms, 1000 * after_rms)
    return fit
