"""Few-shot learning curve: a pretrained model vs the same architecture trained from scratch.

``python -m lam.finetune +experiment=demo_finetune finetune.learning_curve=[10,30,100,300]`` trains, for
every number of frames ``N``:

* ``pretrained``: the pretrained model, finetuned exactly as a single run would (head, references re-fit,
  strategy, learning rate ``optim.lr``);
* ``scratch``: a freshly initialised model of the same architecture with only the finetuned head, element
  references fitted the same way, every parameter trained, learning rate ``finetune.scratch_lr``;

both for the same ``trainer.max_steps`` on the same nested ``N``-frame subset, and evaluates both on the same
fixed test set. Results go to ``<output_dir>/learning_curve.csv`` (written after every run) and
``learning_curve.png``; ``N = 0`` rows are the pretrained model before training (references re-fitted).
"""

from __future__ import annotations

import copy
import csv
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

__all__ = ["CSV_FIELDS", "plot_learning_curve", "read_learning_curve", "run_learning_curve", "scratch_model"]

log = logging.getLogger(__name__)

CSV_FIELDS = ("n_train", "model", "steps", "energy_rmse_per_atom", "energy_mae_per_atom", "force_rmse", "force_mae",
              "train_seconds")
"""Columns of ``learning_curve.csv`` (errors in eV/atom and eV/Å)."""


def scratch_model(pretrained: nn.Module, head: str, seed: int) -> nn.Module:
    """A freshly initialised model with the architecture of ``pretrained`` and the single head ``head``."""
    from lam.models.builder import build_from_metadata

    meta = dict(getattr(pretrained, "export_metadata", {}).get("model") or pretrained.metadata)
    first = next(iter(meta["head_configs"].values())) if meta.get("head_configs") else None
    meta.update(heads=[head], seed=int(seed))
    if first is not None:
        meta["head_configs"] = {head: meta["head_configs"].get(head, first)}
    model = build_from_metadata(meta)
    return model.to(pretrained.dtype)


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_FIELDS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in CSV_FIELDS})
    os.replace(tmp, path)


def read_learning_curve(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a ``learning_curve.csv`` with numbers parsed."""
    rows = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            rows.append({k: (v if k == "model" else float(v) if v != "" else float("nan")) for k, v in row.items()})
    return rows


def plot_learning_curve(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Energy-per-atom and force RMSE against training frames, one line per model kind (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.8))
    for ax, key, label in ((axes[0], "energy_rmse_per_atom", "energy RMSE (meV/atom)"),
                           (axes[1], "force_rmse", "force RMSE (meV/Å)")):
        for kind, style in (("pretrained", "o-"), ("scratch", "s--")):
            pts = sorted((int(r["n_train"]), 1000 * float(r[key])) for r in rows
                         if r["model"] == kind and int(r["n_train"]) > 0)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=kind)
        zero = [1000 * float(r[key]) for r in rows if r["model"] == "pretrained" and int(r["n_train"]) == 0]
        if zero:
            ax.axhline(zero[0], color="0.5", ls=":", lw=1, label="pretrained, before training")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training frames N")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def _row(n: int, kind: str, steps: int, metrics: Mapping[str, float], seconds: float) -> dict[str, Any]:
    return {"n_train": n, "model": kind, "steps": steps, "train_seconds": round(seconds, 1),
            **{k: metrics[k] for k in CSV_FIELDS if k in metrics}}


def run_learning_curve(cfg: DictConfig) -> dict[str, Any]:
    """Run the learning curve of ``cfg.finetune.learning_curve``; returns ``{"csv", "png", "rows"}``."""
    from lam.eval import evaluate
    from lam.finetune.bias import refit_element_references
    from lam.finetune.job import fit, load_downstream, make_datamodule
    from lam.finetune.strategies import apply_strategy, prepare_heads

    output_dir = Path(str(cfg.output_dir)).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    ft = cfg.finetune
    head = str(ft.head)
    sizes = sorted(int(n) for n in ft.learning_curve)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    pristine = instantiate(cfg.model, _convert_="all")
    data = load_downstream(cfg)
    data.check_elements(pristine.type_map)
    if sizes[-1] > len(data.pool):
        raise ValueError(f"finetune.learning_curve asks for {sizes[-1]} frames but the training pool has "
                         f"{len(data.pool)} (data.train {data.train_paths})")
    bs = int(ft.eval_batch_size)
    csv_path, png_path = output_dir / "learning_curve.csv", output_dir / "learning_curve.png"
    scratch_optim = {**resolved["optim"], "lr": float(ft.scratch_lr)}
    rows: list[dict[str, Any]] = []
    for n in sizes:
        train_h5, _ = data.write(output_dir / "data", n, head)
        frames = data.subset(n)
        for kind in ("pretrained", "scratch"):
            L.seed_everything(int(cfg.seed), workers=True, verbose=False)
            if kind == "pretrained":
                model = copy.deepcopy(pristine)
                prepare_heads(model, head, init_from=ft.get("init_from"), keep_heads=ft.get("keep_heads", "all"))
                strategy, optim = str(ft.strategy), resolved["optim"]
            else:
                model = scratch_model(pristine, head, int(cfg.seed))
                strategy, optim = "full", scratch_optim
            refit_element_references(model, head, frames, batch_size=bs)
            if kind == "pretrained" and n == sizes[0]:
                zero = evaluate(model, data.test, head, batch_size=bs).metrics
                rows.append(_row(0, "pretrained", 0, zero, 0.0))
            apply_strategy(model, strategy, [head])
            datamodule = make_datamodule(cfg.data, model, train_h5, head, seed=int(cfg.seed))
            t0 = time.perf_counter()
            module = fit(model, datamodule, cfg, output_dir / "runs" / f"{kind}_{n}", optim,
                         {"config": resolved, "learning_curve": {"n_train": n, "model": kind}},
                         checkpoints=False, loggers=False)
            seconds = time.perf_counter() - t0
            metrics = evaluate(module.ema_model(), data.test, head, batch_size=bs).metrics
            rows.append(_row(n, kind, int(module.trainer.global_step), metrics, seconds))
            _write_csv(csv_path, rows)
            log.info("learning curve N=%d %s: E RMSE %.2f meV/atom, F RMSE %.1f meV/Å (%.0f s)", n, kind,
                     1000 * metrics["energy_rmse_per_atom"], 1000 * metrics["force_rmse"], seconds)
            del module, model
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    title = (f"head {head}: {len(data.test)} test frames, {int(cfg.trainer.max_steps)} steps per run, "
             f"strategy {ft.strategy}")
    plot_learning_curve(rows, png_path, title=title)
    print(f"\nLearning curve ({title}), RMSE on the fixed test set:")
    print(f"{'N':>5}  {'model':10s}  {'E (meV/atom)':>12}  {'F (meV/Å)':>10}")
    for r in rows:
        print(f"{r['n_train']:>5}  {r['model']:10s}  {1000 * r['energy_rmse_per_atom']:12.2f}  "
              f"{1000 * r['force_rmse']:10.1f}")
    print(f"\nCSV: {csv_path}\nPNG: {png_path}")
    return {"csv": csv_path, "png": png_path, "rows": rows}
