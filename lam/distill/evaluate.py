"""Batched model evaluation on frames: teacher labels, committee forces, speed measurements."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lam.data import keys as K
from lam.data.frame import Frame


def _batch(model: torch.nn.Module, frames: Sequence[Frame], head_index: int, start: int = 0) -> Any:
    """One label-free batch of ``frames`` at the model's cutoff and dtype (labels are never read by the model).

    Small molecules share one neighbour search (:func:`lam.data.graph.collate_frames`).
    """
    from lam.data.graph import collate_frames

    where = f"frames {start}..{start + len(frames) - 1}: frame"
    return collate_frames(frames, float(model.rcut), head=head_index, dtype=model.dtype, labels=False, where=where)


def _evaluate(model: torch.nn.Module, frames: Sequence[Frame], head_index: int, start: int = 0,
              compute_virial: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Energies (G,), forces (N, 3), virials (G, 3, 3) or None, and atom offsets (G + 1,) of one batch."""
    batch = _batch(model, frames, head_index, start).to(next(model.parameters()).device)
    virial = compute_virial and all(f.pbc.all() and f.volume > 0 for f in frames)
    out = model(batch, compute_forces=True, compute_virial=virial)
    energy = out[K.ENERGY].detach().double().cpu().numpy()
    forces = out[K.FORCES].detach().double().cpu().numpy()
    virials = out[K.VIRIAL].detach().double().cpu().numpy() if virial else None
    return energy, forces, virials, batch[K.PTR].cpu().numpy()


def predict(model: torch.nn.Module, frames: Sequence[Frame], head: str, batch_size: int = 32,
            compute_virial: bool = False) -> list[Frame]:
    """Energies and forces (and virials of periodic frames) of ``model``'s ``head`` for each frame, batched."""
    head_index = model.head_names.index(head)
    out_frames: list[Frame] = []
    for start in range(0, len(frames), batch_size):
        chunk = frames[start:start + batch_size]
        energy, forces, virials, ptr = _evaluate(model, chunk, head_index, start, compute_virial)
        for g, f in enumerate(chunk):
            out_frames.append(Frame(numbers=f.numbers, positions=f.positions, cell=f.cell, pbc=f.pbc,
                                    energy=float(energy[g]), forces=forces[ptr[g]:ptr[g + 1]],
                                    virial=None if virials is None else virials[g]))
    return out_frames


def predict_task(model_dir: str, head: str, frames: Sequence[Frame], batch_size: int = 32,
                 compute_virial: bool = False, threads: int = 1) -> list[Frame]:
    """Executor task: load an exported model in the worker and :func:`predict` with it."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)
    from lam.checkpoint import load

    return predict(load(model_dir), frames, head, batch_size=batch_size, compute_virial=compute_virial)


def time_energy_forces(model: torch.nn.Module, frames: Sequence[Frame], head: str, repeats: int = 5,
                       warmup: int = 2) -> float:
    """Median seconds of one batched energy+forces evaluation of all ``frames``, from positions to numpy arrays
    (graph building and neighbour lists included; :func:`predict` then only wraps the arrays in frames)."""
    head_index = model.head_names.index(head)
    times = []
    for k in range(warmup + repeats):
        t0 = time.perf_counter()
        _evaluate(model, frames, head_index)
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def time_model_only(model: torch.nn.Module, frames: Sequence[Frame], head: str, repeats: int = 5,
                    warmup: int = 2) -> float:
    """Median seconds of the model's energy+forces on one prebuilt batch of all ``frames`` (no graph building)."""
    batch = _batch(model, frames, model.head_names.index(head)).to(next(model.parameters()).device)
    times = []
    for k in range(warmup + repeats):
        t0 = time.perf_counter()
        model(batch, compute_forces=True)
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def force_rmse(reference: Sequence[Frame], predicted: Sequence[Frame]) -> float:
    """Force RMSE per component (eV/Å) over all atoms of frames that have reference forces."""
    diffs = [p.forces - r.forces for r, p in zip(reference, predicted) if r.forces is not None]
    if not diffs:
        return float("nan")
    return float(np.sqrt(np.mean(np.concatenate(diffs) ** 2)))


def energy_rmse_per_atom(reference: Sequence[Frame], predicted: Sequence[Frame]) -> float:
    pairs = [(r, p) for r, p in zip(reference, predicted) if r.energy is not None]
    if not pairs:
        return float("nan")
    return float(np.sqrt(np.mean([((p.energy - r.energy) / r.n_atoms) ** 2 for r, p in pairs])))
