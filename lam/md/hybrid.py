"""Hybrid training: direct-force pretraining, then conservative finetuning (``python -m lam.md.hybrid``).

Stage 1 (``python -m lam.pretrain +experiment=hybrid_demo``) trains the energy and the direct-force head
only: no step differentiates the energy twice, which makes pretraining cheaper. Stage 2
(``python -m lam.finetune +experiment=hybrid_demo_finetune``) starts from the stage-1 export and trains the
conservative forces ``-dE/dr`` (keeping a direct-force term so that the direct head stays consistent with
the descriptor). The result has both: conservative forces for production MD and direct forces for the
inner steps of multiple time stepping (:func:`lam.md.run.run_md` with ``ensemble="mts"``).

Usage::

    python -m lam.md.hybrid [stage-1 overrides ...] [--finetune stage-2 overrides ...]

e.g. ``python -m lam.md.hybrid trainer.max_steps=50 --finetune trainer.max_steps=20``. Both stages are the
ordinary jobs (:func:`lam.train.job.run_pretraining`, :func:`lam.finetune.job.run_finetuning`); this
module only chains them, passing the stage-1 export to stage 2 as ``model.source``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase.data import atomic_numbers

__all__ = ["CONF_DIR", "distill_direct_head", "main", "quick_fit", "run_hybrid"]

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
STAGE1_EXPERIMENT = "hybrid_demo"
STAGE2_EXPERIMENT = "hybrid_demo_finetune"


def _compose(config_name: str, overrides: Sequence[str]) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def run_hybrid(pretrain_overrides: Sequence[str] = (), finetune_overrides: Sequence[str] = (),
               stage1_experiment: str = STAGE1_EXPERIMENT, stage2_experiment: str = STAGE2_EXPERIMENT
               ) -> dict[str, Any]:
    """Run stage 1 (direct-force pretraining) and stage 2 (conservative finetuning from its export).

    Returns ``{"stage1": <run_pretraining result>, "stage2": <run_finetuning result>, "export_dir": Path}``.
    An ``output_dir`` override of stage 1 also moves stage 2 next to it (``<parent>/stage2_conservative``)
    unless stage 2 has its own.
    """
    from lam.finetune.job import run_finetuning
    from lam.train.job import run_pretraining

    cfg1 = _compose("pretrain", [f"+experiment={stage1_experiment}", *pretrain_overrides])
    if not cfg1.loss.get("direct_forces"):
        raise ValueError(f"stage 1 ({stage1_experiment}) must train direct_forces; its loss is {dict(cfg1.loss)}")
    if not cfg1.model.get("direct_force"):
        raise ValueError(f"stage 1 ({stage1_experiment}) needs a model built with direct_force")
    stage1 = run_pretraining(cfg1)
    export1 = Path(stage1["export_dir"])
    overrides2 = [f"+experiment={stage2_experiment}", f"model.source={export1}"]
    if any(o.startswith("output_dir=") for o in pretrain_overrides) and not any(
            o.startswith("output_dir=") for o in finetune_overrides):
        overrides2.append(f"output_dir={Path(str(cfg1.output_dir)).parent / 'stage2_conservative'}")
    cfg2 = _compose("finetune", [*overrides2, *finetune_overrides])
    if not cfg2.loss.get("forces"):
        raise ValueError(f"stage 2 ({stage2_experiment}) must train the conservative forces (loss.forces)")
    stage2 = run_finetuning(cfg2)
    return {"stage1": stage1, "stage2": stage2, "export_dir": Path(stage2["export_dir"])}


def _set_references(model: Any, frames: Sequence[Any], head: str) -> None:
    """Least-squares element energies of ``head`` from the frames' compositions (minimum-norm solution)."""
    type_map = list(model.type_map)
    counts = np.array([[np.sum(f.numbers == atomic_numbers[s]) for s in type_map] for f in frames], dtype=float)
    energies = np.array([float(f.energy) for f in frames])
    coef = np.linalg.lstsq(counts, energies, rcond=None)[0]
    model.set_element_energies(head, {s: float(c) for s, c in zip(type_map, coef)})


def quick_fit(model: Any, frames: Sequence[Any], steps: int, head: str | None = None, lr: float = 2e-3,
              loss: Any = None, seed: int = 0, batch_size: int = 1, direct_consistency: float = 0.0) -> list[float]:
    """A minimal in-memory training loop for small experiments (tests, benchmarks), returns the losses.

    Sets the head's element references by least squares, then trains with Adam (learning rate decaying
    exponentially to ``lr / 10``) on random batches of ``frames`` (labelled :class:`~lam.data.frame.Frame`s).
    The default loss trains the energy, the conservative forces and, when the model has a direct-force head,
    the direct forces, plus the ``direct_consistency`` term with prefactor ``direct_consistency`` when it is
    positive. Real training runs use ``python -m lam.pretrain`` / ``lam.finetune``.
    """
    from lam.data.graph import AtomicGraph, collate
    from lam.train.loss import PotentialLoss

    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    head = head if head is not None else model.head_names[0]
    h = model.head_names.index(head)
    frames = list(frames)
    _set_references(model, frames, head)
    graphs = [AtomicGraph.from_frame(f, model.rcut, head=h, dtype=model.dtype, where=f"frame {k}")
              for k, f in enumerate(frames)]
    direct = getattr(model, "direct_force_head", None) is not None
    if loss is None:
        loss = PotentialLoss(energy={"start_pref": 1.0, "limit_pref": 1.0},
                             forces={"start_pref": 100.0, "limit_pref": 100.0},
                             direct_forces={"start_pref": 100.0, "limit_pref": 100.0} if direct else None,
                             direct_consistency={"start_pref": direct_consistency, "limit_pref": direct_consistency}
                             if direct and direct_consistency > 0 else None)
    device = model.device
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    gamma = 0.1 ** (1.0 / max(steps, 1))
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma)
    losses = []
    model.train()
    for _ in range(steps):
        batch = collate([graphs[i] for i in rng.choice(len(graphs), size=min(batch_size, len(graphs)),
                                                       replace=False)]).to(device)
        pred = model(batch, compute_forces=loss.needs_forces, compute_direct=loss.needs_direct_forces)
        total, _ = loss(pred, batch, 1.0)
        opt.zero_grad()
        total.backward()
        opt.step()
        sched.step()
        losses.append(float(total.detach()))
    model.eval()
    return losses


def distill_direct_head(model: Any, structures: Sequence[Any], steps: int, head: str | None = None,
                        lr: float = 3e-3, seed: int = 0, noise: float = 0.0, copies: int = 0) -> float:
    """Fit only the direct-force head to the model's own conservative forces on ``structures`` (ASE Atoms).

    Descriptor features are computed once, so each step costs one head evaluation. Multiple time stepping
    integrates the difference ``F_C - F_NC`` at the outer steps: the closer the direct forces are to the
    conservative ones, the larger the outer step can be. ``copies`` extra copies of every structure with
    Gaussian displacements of ``noise`` Å per coordinate (seeded by ``seed``), labelled with the model's own
    ``-dE/dr`` too, teach the head the force field around the sampled configurations (closer contacts, the
    walls MD runs into when it heats). Returns the final RMS of ``F_NC - F_C`` (eV/Å) over all samples.
    """
    if noise < 0 or copies < 0:
        raise ValueError(f"noise and copies must be >= 0, got {noise} and {copies}")
    from lam.data import keys as K
    from lam.data.graph import edge_vectors
    from lam.md.calculator import atoms_to_batch

    if model.direct_force_head is None:
        raise ValueError("distill_direct_head needs a model with a direct-force head")
    head = head if head is not None else model.head_names[0]
    h = model.head_names.index(head)
    model.eval()
    device = model.device
    rng = np.random.default_rng(seed)
    samples = list(structures)
    if noise > 0:
        for atoms in list(samples):
            for _ in range(copies):
                moved = atoms.copy()
                moved.positions = atoms.positions + rng.normal(0.0, noise, atoms.positions.shape)
                samples.append(moved)
    data = []
    for atoms in samples:
        batch = atoms_to_batch([atoms], model.rcut, head=h, dtype=model.dtype, device=device)
        target = model(batch, compute_forces=True)[K.FORCES].detach()
        with torch.no_grad():
            types = model.types_from_numbers(batch[K.NUMBERS])
            vec = edge_vectors(batch[K.POSITIONS], batch[K.EDGE_INDEX], batch[K.SHIFTS], batch[K.CELL],
                               batch[K.BATCH])
            atom_head = batch[K.HEAD][batch[K.BATCH]]
            _, feats = model.atomic_energies(types, batch[K.EDGE_INDEX], vec, atom_head, [h])
        data.append((feats, batch[K.EDGE_INDEX], vec, target))
    dfh = model.direct_force_head
    opt = torch.optim.Adam(dfh.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.1 ** (1.0 / max(steps, 1)))
    dfh.train()
    for _ in range(steps):
        feats, edges, vec, target = data[int(rng.integers(len(data)))]
        err = dfh(feats, edges, vec) - target
        loss = err.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    dfh.eval()
    with torch.no_grad():
        sq = [(dfh(f, e, v) - t).square().mean() for f, e, v, t in data]
    return float(torch.stack(sq).mean().sqrt())


def distill_frozen_head(model: Any, trajectory: Sequence[Any], steps: int, lag: int = 8, head: str | None = None,
                        lr: float = 3e-3, seed: int = 0, stride: int = 1, variation: float = 0.0
                        ) -> dict[str, float]:
    """Fit only the direct-force head as the inner force of ``inner="frozen"`` multiple time stepping.

    ``trajectory``: consecutive MD frames (ASE Atoms) one inner step apart. Each sample pairs an *anchor*
    frame ``a`` (taken every ``stride`` frames), whose descriptor features the head reads, with a frame
    ``a + s`` (``0 <= s <= lag``, the inner steps of an outer step), whose geometry it reads; the target is
    the model's ``-dE/dr`` at frame ``a + s``. This is exactly what the head computes inside an outer step of
    ``lag`` inner steps, so the fit asks the slow force ``F_C - F_NC`` to stay small over the outer step.
    ``variation`` > 0 adds that weight times the mean square *change* of the error between the anchor and
    frame ``a + s``: r-RESPA applies the slow force as kicks at the ends of the outer step, so what its
    accuracy (and the resonances with the O-H stretch) depends on is how much ``F_C - F_NC`` varies over the
    step, more than its size. Returns the RMS of ``F_NC - F_C`` (eV/Å) at lag 0 and at lag ``lag`` over the
    anchors, and the RMS of its change over ``lag`` frames (``change``).
    """
    from lam.data import keys as K
    from lam.data.graph import edge_vectors
    from lam.md.calculator import atoms_to_batch

    if model.direct_force_head is None:
        raise ValueError("distill_frozen_head needs a model with a direct-force head")
    frames = list(trajectory)
    if lag < 0 or stride < 1 or len(frames) < lag + 2:
        raise ValueError(f"need lag >= 0, stride >= 1 and more than lag + 1 frames; got lag {lag}, stride "
                         f"{stride}, {len(frames)} frames")
    head = head if head is not None else model.head_names[0]
    h = model.head_names.index(head)
    dfh = model.direct_force_head
    model.eval()
    device = model.device
    anchors = list(range(0, len(frames) - lag, stride))
    anchor_set = set(anchors)
    need = sorted({a + s for a in anchors for s in range(lag + 1)})
    feats, geom, target = {}, {}, {}
    for k in need:
        batch = atoms_to_batch([frames[k]], model.rcut, head=h, dtype=model.dtype, device=device)
        out = model(batch, compute_forces=True, return_features=k in anchor_set)
        target[k] = out[K.FORCES].detach()
        if k in anchor_set:
            feats[k] = out[K.FEATURES]
        small = atoms_to_batch([frames[k]], float(dfh.rcut), head=h, dtype=model.dtype, device=device)
        with torch.no_grad():
            vec = edge_vectors(small[K.POSITIONS], small[K.EDGE_INDEX], small[K.SHIFTS], small[K.CELL],
                               small[K.BATCH])
        geom[k] = (small[K.EDGE_INDEX], vec)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(dfh.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.1 ** (1.0 / max(steps, 1)))
    dfh.train()
    for _ in range(steps):
        a = anchors[int(rng.integers(len(anchors)))]
        t = a + int(rng.integers(lag + 1))
        err = dfh(feats[a], *geom[t]) - target[t]
        loss = err.square().mean()
        if variation > 0 and t != a:
            loss = loss + variation * (err - (dfh(feats[a], *geom[a]) - target[a])).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    dfh.eval()

    def rms(s: int) -> float:
        with torch.no_grad():
            sq = [(dfh(feats[a], *geom[a + s]) - target[a + s]).square().mean() for a in anchors]
        return float(torch.stack(sq).mean().sqrt())

    with torch.no_grad():
        change = [((dfh(feats[a], *geom[a + lag]) - target[a + lag]) - (dfh(feats[a], *geom[a]) - target[a]))
                  .square().mean() for a in anchors]
    return {"lag0": rms(0), f"lag{lag}": rms(lag), "change": float(torch.stack(change).mean().sqrt())}


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m lam.md.hybrid [stage-1 overrides] [--finetune stage-2 overrides]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--finetune" in args:
        k = args.index("--finetune")
        first, second = args[:k], args[k + 1:]
    else:
        first, second = args, []
    result = run_hybrid(first, second)
    print(f"\nHybrid model (direct + conservative forces): {result['export_dir']}")
    print(f"MD with it: python -m lam.md model={result['export_dir']} head=pbe structure=... ensemble=mts n_inner=4")


if __name__ == "__main__":
    main()
