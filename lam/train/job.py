"""The pretraining job behind ``python -m lam.pretrain``: config in, trained + exported model out.

Everything here is generic: the model, data, loss, trainer and loggers come from ``_target_`` entries of
the Hydra config. Outputs of a run live under ``cfg.output_dir``::

    checkpoints/last.ckpt   Lightning checkpoint (resume: rerun the same command)
    logs/                   CSV (and wandb) logs
    export/                 model.safetensors + metadata.json (lam.load)
    .hydra/                 the composed configuration
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from lam.checkpoint import export_model
from lam.runtime import configure_allocator
from lam.train.callbacks import AtomicCheckpointIO, SeenFramesRecorder, ValidationHistory
from lam.train.module import PotentialModule

__all__ = ["check_config", "format_metrics_table", "run_pretraining"]

log = logging.getLogger(__name__)

_METRICS = (("energy_rmse_per_atom", "E RMSE (meV/atom)", 1000.0), ("energy_mae_per_atom", "E MAE (meV/atom)", 1000.0),
            ("force_rmse", "F RMSE (meV/Å)", 1000.0), ("force_mae", "F MAE (meV/Å)", 1000.0),
            ("virial_rmse_per_atom", "W RMSE (meV/atom)", 1000.0))


def check_config(cfg: DictConfig) -> None:
    """Reject option combinations the job cannot honour (rather than changing them silently)."""
    t = cfg.trainer
    if t.get("inference_mode", True):
        raise ValueError("trainer.inference_mode must be false: validation differentiates the energy for forces")
    if t.get("use_distributed_sampler", True):
        raise ValueError("trainer.use_distributed_sampler must be false: the data module shards batches by rank")
    if int(t.get("accumulate_grad_batches", 1)) != 1:
        raise ValueError("trainer.accumulate_grad_batches must be 1 (raise data.batch_size instead)")
    if cfg.get("resume") not in ("auto", "never", None) and not Path(str(cfg.resume)).is_file():
        raise ValueError(f"resume must be 'auto', 'never' or an existing checkpoint file, got {cfg.resume!r}")


def _resume_path(cfg: DictConfig, ckpt_dir: Path) -> str | None:
    mode = cfg.get("resume", "auto")
    if mode in (None, "never"):
        return None
    if mode == "auto":
        last = ckpt_dir / "last.ckpt"
        return str(last) if last.is_file() else None
    return str(mode)


def format_metrics_table(heads: Sequence[str], final: Mapping[str, float],
                         initial: Mapping[str, float] | None = None) -> str:
    """Plain-text table of the validation errors per head (meV units); ``initial → final`` when given."""
    cols = [(key, title, scale) for key, title, scale in _METRICS
            if any(f"val/{h}/{key}" in final for h in heads)]
    header = ["head", *[title for _, title, _ in cols]]
    rows = [header]
    for h in heads:
        row = [h]
        for key, _, scale in cols:
            name = f"val/{h}/{key}"
            if name not in final:
                row.append("-")
            elif initial is not None and name in initial:
                row.append(f"{initial[name] * scale:.1f} → {final[name] * scale:.1f}")
            else:
                row.append(f"{final[name] * scale:.1f}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _build_loggers(cfg: DictConfig) -> list[Any]:
    if cfg.get("logger") in (None, False):
        return []
    return [instantiate(entry) for entry in cfg.logger.values() if entry is not None]


def _validation_metrics(trainer: L.Trainer, module: PotentialModule, datamodule: Any) -> dict[str, float]:
    results = trainer.validate(module, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in (results[0] if results else {}).items()}


def run_pretraining(cfg: DictConfig) -> dict[str, Any]:
    """Train, checkpoint and export; returns ``{"export_dir", "metrics", "initial_metrics"}`` (rank 0 exports)."""
    check_config(cfg)
    configure_allocator()
    output_dir = Path(str(cfg.output_dir)).resolve()
    ckpt_dir = output_dir / "checkpoints"
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    resolved = OmegaConf.to_container(cfg, resolve=True)

    model = instantiate(cfg.model, _convert_="all")
    datamodule = instantiate(cfg.data, _convert_="all", cutoff=float(model.rcut), head_names=model.head_names,
                             dtype=model.dtype)
    ckpt_path = _resume_path(cfg, ckpt_dir)
    if ckpt_path is None:
        references = datamodule.element_references(model.type_map)
        for head, energies in references.items():
            model.set_element_energies(head, energies)
        log.info("element energy references per head: %s", references)
        fit = getattr(model, "fit_descriptor_statistics", None)
        n_stat = int(cfg.get("descriptor_statistics_frames") or 0)  # 0 for runs that start from trained weights
        if fit is not None and n_stat > 0:
            fit(datamodule.sample_graphs(n_stat))
    else:
        log.info("resuming from %s (element references come from the checkpoint)", ckpt_path)
    data_hashes = datamodule.data_hashes()
    module = PotentialModule(
        model, instantiate(cfg.loss, _convert_="all"), optimizer=resolved["optim"],
        scheduler=resolved["scheduler"],
        ema_decay=cfg.ema.decay, ema_warmup=cfg.ema.warmup, max_nonfinite_steps=cfg.max_nonfinite_steps,
        run_info={"config": resolved, "data_hashes": data_hashes, "datasets": datamodule.summary()},
    )
    history = ValidationHistory()
    callbacks: list[Any] = [
        ModelCheckpoint(dirpath=str(ckpt_dir), filename="step{step}", save_last=True, save_top_k=-1
                        if cfg.checkpoint.keep_all else 1, every_n_train_steps=cfg.checkpoint.every_n_steps,
                        auto_insert_metric_name=False),
        history,
    ]
    if cfg.get("record_frames"):
        callbacks.append(SeenFramesRecorder(str(output_dir / "seen_frames")))
    trainer: L.Trainer = instantiate(cfg.trainer, default_root_dir=str(output_dir), callbacks=callbacks,
                                     logger=_build_loggers(cfg) or False, plugins=[AtomicCheckpointIO()])
    for row in datamodule.summary() if trainer.is_global_zero else []:
        log.info("dataset %(name)s head=%(head)s train=%(n_train)d val=%(n_val)d p=%(probability).3f", row)

    initial = None
    if ckpt_path is None and cfg.get("validate_before_training"):
        initial = _validation_metrics(trainer, module, datamodule)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    final = _validation_metrics(trainer, module, datamodule)

    export_dir = output_dir / "export"
    if trainer.is_global_zero:
        export_model(module.ema_model(), export_dir, config=resolved,
                     extra={"data_hashes": data_hashes, "metrics": final, "global_step": trainer.global_step})
        print("\nValidation errors per head (EMA weights" + (", before → after" if initial else "") + "):")
        print(format_metrics_table(model.head_names, final, initial))
        print(f"\nExported model: {export_dir}   (load with lam.load({str(export_dir)!r}))")
        print(f"Checkpoints:    {ckpt_dir}")
    return {"export_dir": export_dir, "metrics": final, "initial_metrics": initial,
            "history": history.history, "rank": int(os.environ.get("RANK", trainer.global_rank))}
