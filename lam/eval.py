"""``python -m lam.eval model=<source> data=<path> head=<name> [output_dir=DIR]``: test errors of a model.

Per-head errors of a model on labelled data (any format :func:`lam.data.formats.read_any` reads): energy per
atom, force components and, when the data has them, virial per atom (MAE and RMSE, eV and Å). The command
writes ``metrics.json`` and a parity plot ``parity.png`` to ``output_dir`` and prints a small table.

``model`` is anything :func:`lam.hub.load` accepts (export directory, ``.lam`` file, ``URL#sha256=…``,
registry name). Options are ``key=value`` pairs (defaults in ``conf/eval.yaml``, the same keys as
:class:`EvalConfig`); ``python -m lam.eval --help`` lists them.

Library use::

    from lam.eval import evaluate
    result = evaluate(model, "test.h5", head="pbe")
    result.metrics["force_rmse"]          # eV/Å
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lam.data.frame import Frame

__all__ = ["EvalConfig", "EvalResult", "evaluate", "format_result", "main", "parity_plot", "resolve_head",
           "write_report"]

log = logging.getLogger(__name__)

_CONF_FILE = Path(__file__).resolve().parents[1] / "conf" / "eval.yaml"
MAX_PLOT_POINTS = 200_000
"""At most this many force components (and virial entries) are kept for the parity plot; metrics use all."""


@dataclass
class EvalConfig:
    """Options of ``python -m lam.eval`` (``key=value`` on the command line)."""

    model: str = "???"
    data: str = "???"
    head: str | None = None
    format: str | None = None
    output_dir: str | None = None
    batch_size: int = 4
    max_frames: int | None = None
    device: str = "auto"


@dataclass
class EvalResult:
    """Errors of one head on one dataset (eV, Å) and the values behind the parity plot.

    ``metrics``: ``energy_mae_per_atom``, ``energy_rmse_per_atom`` (eV/atom), ``force_mae``, ``force_rmse``
    (eV/Å, over Cartesian components), ``virial_mae_per_atom``, ``virial_rmse_per_atom`` (eV/atom, when the
    data has virials), ``n_frames``, ``n_atoms``. The arrays hold reference and predicted values: energies
    per atom (one per frame), force components and virial entries per atom (capped at
    :data:`MAX_PLOT_POINTS`).
    """

    head: str
    metrics: dict[str, float]
    energy: tuple[np.ndarray, np.ndarray]
    forces: tuple[np.ndarray, np.ndarray]
    virial: tuple[np.ndarray, np.ndarray] | None = None
    info: dict[str, Any] = field(default_factory=dict)


class _Sums:
    """Streaming absolute and squared error sums of one quantity."""

    def __init__(self) -> None:
        self.abs = 0.0
        self.sq = 0.0
        self.n = 0
        self.ref: list[np.ndarray] = []
        self.pred: list[np.ndarray] = []
        self.kept = 0

    def add(self, ref: np.ndarray, pred: np.ndarray, cap: int | None) -> None:
        err = pred - ref
        self.abs += float(np.abs(err).sum())
        self.sq += float(np.square(err).sum())
        self.n += int(err.size)
        if cap is None or self.kept < cap:
            take = err.size if cap is None else min(err.size, cap - self.kept)
            self.ref.append(ref.reshape(-1)[:take])
            self.pred.append(pred.reshape(-1)[:take])
            self.kept += take

    def mae(self) -> float:
        return self.abs / self.n

    def rmse(self) -> float:
        return math.sqrt(self.sq / self.n)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.ref:
            return np.zeros(0), np.zeros(0)
        return np.concatenate(self.ref), np.concatenate(self.pred)


def resolve_head(model: nn.Module, head: str | None) -> str:
    """The head to evaluate: ``head``, or the only head of a single-head model."""
    names = list(model.head_names)
    if head is None:
        if len(names) != 1:
            raise ValueError(f"the model has heads {names}: choose one with head=<name>")
        return names[0]
    if head not in names:
        raise ValueError(f"head {head!r} is not a head of the model; it has {names}")
    return head


def _frames(data: str | os.PathLike | Iterable[Frame], format: str | None, max_frames: int | None
            ) -> Iterable[tuple[int, Frame, str]]:
    if isinstance(data, (str, os.PathLike)):
        from lam.data.formats import read_any

        source: Iterable[Frame] = read_any(data, format=format)
        label = str(data)
    else:
        source, label = data, "frames"
    for k, frame in enumerate(source):
        if max_frames is not None and k >= max_frames:
            break
        yield k, frame, f"{label}: frame {k}"


def _device(name: str | torch.device | None, model: nn.Module) -> torch.device:
    if name is None:
        return next(model.parameters()).device
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluate(model: nn.Module, data: str | os.PathLike | Iterable[Frame], head: str | None = None, *,
             format: str | None = None, batch_size: int = 4, max_frames: int | None = None,
             device: str | torch.device | None = None) -> EvalResult:
    """Errors of ``model`` (head ``head``) on labelled ``data`` (a path in any format, or frames).

    Frames without an energy (forces, virial) label are left out of that metric. Raises ``ValueError`` if
    the data has no frames or no labels at all.
    """
    from lam.data.graph import AtomicGraph, collate

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    head = resolve_head(model, head)
    index = list(model.head_names).index(head)
    dev = _device(device, model)
    was_training = model.training
    model = model.to(dev).eval()
    dtype = model.dtype
    energy, forces, virial = _Sums(), _Sums(), _Sums()
    n_frames = n_atoms = 0
    batch: list[Any] = []
    frames: list[Frame] = []

    def flush() -> None:
        b = collate(batch).to(dev)
        want_virial = any(f.virial is not None for f in frames)
        out = model(b, compute_forces=True, compute_virial=want_virial, head=head)
        e = out["energy"].detach().double().cpu().numpy()
        f_pred = out["forces"].detach().double().cpu().numpy()
        starts = b.ptr.cpu().numpy()
        for g, fr in enumerate(frames):
            n = fr.n_atoms
            if fr.energy is not None:
                energy.add(np.array([fr.energy / n]), np.array([e[g] / n]), None)
            if fr.forces is not None:
                forces.add(fr.forces, f_pred[starts[g]:starts[g + 1]], MAX_PLOT_POINTS)
            if fr.virial is not None:
                v_pred = out["virial"][g].detach().double().cpu().numpy()
                virial.add(fr.virial / n, v_pred / n, MAX_PLOT_POINTS)
        batch.clear()
        frames.clear()

    for _, frame, where in _frames(data, format, max_frames):
        batch.append(AtomicGraph.from_frame(frame, model.rcut, head=index, dtype=dtype, where=where))
        frames.append(frame)
        n_frames += 1
        n_atoms += frame.n_atoms
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    model.train(was_training)
    if n_frames == 0:
        raise ValueError(f"{data}: no frames to evaluate")
    if energy.n == forces.n == virial.n == 0:
        raise ValueError(f"{data}: no frame has an energy, force or virial label")
    metrics: dict[str, float] = {"n_frames": float(n_frames), "n_atoms": float(n_atoms)}
    for name, sums in (("energy", energy), ("force", forces), ("virial", virial)):
        if sums.n:
            suffix = "" if name == "force" else "_per_atom"
            metrics[f"{name}_mae{suffix}"] = sums.mae()
            metrics[f"{name}_rmse{suffix}"] = sums.rmse()
    return EvalResult(head=head, metrics=metrics, energy=energy.arrays(), forces=forces.arrays(),
                      virial=virial.arrays() if virial.n else None)


def parity_plot(result: EvalResult, path: str | os.PathLike, title: str | None = None) -> Path:
    """Write a parity plot (predicted vs reference) of energy per atom, forces and virial when present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("energy", result.energy, "energy per atom (eV/atom)", "energy_rmse_per_atom", "meV/atom"),
              ("forces", result.forces, "force component (eV/Å)", "force_rmse", "meV/Å")]
    if result.virial is not None:
        panels.append(("virial", result.virial, "virial per atom (eV/atom)", "virial_rmse_per_atom", "meV/atom"))
    panels = [p for p in panels if p[1][0].size]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
    for ax, (name, (ref, pred), label, key, unit) in zip(axes[0], panels):
        lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
        pad = 0.02 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.6", lw=1, zorder=0)
        ax.scatter(ref, pred, s=4 if name == "energy" else 1, alpha=0.6, rasterized=True)
        ax.set_xlabel(f"reference {label}")
        ax.set_ylabel(f"predicted {label}")
        ax.set_title(f"{name}: RMSE {result.metrics[key] * 1000:.1f} {unit}")
        ax.ticklabel_format(useOffset=False)
        ax.set_aspect("equal", adjustable="datalim")
    fig.suptitle(title or f"head {result.head}")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_report(result: EvalResult, output_dir: str | os.PathLike, info: dict[str, Any] | None = None
                 ) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``parity.png`` to ``output_dir``; returns both paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"head": result.head, "metrics": result.metrics,
               "units": {"energy": "eV/atom", "force": "eV/Å", "virial": "eV/atom"}, **(info or {})}
    json_path = out / "metrics.json"
    json_path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    png_path = parity_plot(result, out / "parity.png", title=f"head {result.head}: {info.get('data', '')}"
                           if info else None)
    return json_path, png_path


def format_result(result: EvalResult) -> str:
    """A few lines of text: the errors in meV units."""
    m = result.metrics
    lines = [f"head {result.head}: {int(m['n_frames'])} frames, {int(m['n_atoms'])} atoms"]
    for key, title, unit in (("energy_mae_per_atom", "E MAE", "meV/atom"), ("energy_rmse_per_atom", "E RMSE",
                             "meV/atom"), ("force_mae", "F MAE", "meV/Å"), ("force_rmse", "F RMSE", "meV/Å"),
                             ("virial_mae_per_atom", "W MAE", "meV/atom"),
                             ("virial_rmse_per_atom", "W RMSE", "meV/atom")):
        if key in m:
            lines.append(f"  {title:7s} {m[key] * 1000:10.2f} {unit}")
    return "\n".join(lines)


def load_config(overrides: Sequence[str]) -> EvalConfig:
    """Defaults (:class:`EvalConfig`, then ``conf/eval.yaml``) updated by ``key=value`` overrides."""
    from omegaconf import OmegaConf

    schema = OmegaConf.structured(EvalConfig)
    layers = [schema]
    if _CONF_FILE.is_file():
        layers.append(OmegaConf.load(_CONF_FILE))
    bad = [o for o in overrides if "=" not in o or o.startswith("-")]
    if bad:
        raise ValueError(f"arguments must be key=value pairs, got {bad}; keys: {list(EvalConfig.__dataclass_fields__)}")
    layers.append(OmegaConf.from_dotlist(list(overrides)))
    try:
        cfg = OmegaConf.merge(*layers)
    except Exception as exc:  # omegaconf raises its own ConfigKeyError / ValidationError
        raise ValueError(f"bad option: {exc}".splitlines()[0] + f" (keys: {list(EvalConfig.__dataclass_fields__)})"
                         ) from exc
    missing = [k for k in ("model", "data") if OmegaConf.is_missing(cfg, k)]
    if missing:
        raise ValueError(f"missing required option(s) {missing}: python -m lam.eval model=<source> data=<path>")
    return EvalConfig(**OmegaConf.to_container(cfg))  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code (2 for bad options or data)."""
    parser = argparse.ArgumentParser(
        prog="python -m lam.eval", description=__doc__.split("\n\n")[0],
        epilog="keys: " + ", ".join(f"{k} (default {v.default!r})" for k, v in EvalConfig.__dataclass_fields__.items()))
    parser.add_argument("overrides", nargs="*", help="key=value options")
    args = parser.parse_args(argv)
    from lam.runtime import configure_allocator

    configure_allocator()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.overrides)
        import lam.hub

        model = lam.hub.load(cfg.model)
        head = resolve_head(model, cfg.head)
        result = evaluate(model, cfg.data, head, format=cfg.format, batch_size=cfg.batch_size,
                          max_frames=cfg.max_frames, device=cfg.device)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    output_dir = Path(cfg.output_dir) if cfg.output_dir else Path("outputs/eval") / f"{Path(cfg.data).stem}_{head}"
    json_path, png_path = write_report(result, output_dir, info={"model": cfg.model, "data": cfg.data})
    print(format_result(result))
    print(f"\nmetrics: {json_path}\nparity plot: {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
