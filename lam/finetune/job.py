"""The finetuning job behind ``python -m lam.finetune``: pretrained model + downstream data → finetuned export.

A finetuning run is a new run whose model node loads an exported model (``model.source``: path, ``.lam``
file, ``URL#sha256=…`` or hub name). Then, in order:

1. downstream data: training pool + fixed test set (:class:`~lam.finetune.data.DownstreamData`), the
   ``data.n_train`` subset written to LAM-H5 under ``<output_dir>/data``;
2. heads: inherit ``finetune.head`` or add it (``finetune.init_from`` or random); keep the other heads
   per ``finetune.keep_heads`` (:func:`~lam.finetune.strategies.prepare_heads`);
3. element references of the finetuned head re-fitted on the training frames (:mod:`lam.finetune.bias`);
4. test errors before training; trainable parameters per ``finetune.strategy``;
5. training (Lightning, the generic :class:`~lam.train.module.PotentialModule`), optionally with replayed
   pretraining data for other heads (``finetune.replay``);
6. test errors after training, export to ``<output_dir>/export`` (``lam.load``), a before/after table.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lam.finetune.data import DownstreamData
from lam.train.job import check_config

__all__ = ["check_finetune_config", "check_source", "fit", "load_pretrained", "make_datamodule", "replay_specs",
           "run_finetuning", "test_table"]

log = logging.getLogger(__name__)

_TABLE = (("energy_rmse_per_atom", "E RMSE (meV/atom)"), ("energy_mae_per_atom", "E MAE (meV/atom)"),
          ("force_rmse", "F RMSE (meV/Å)"), ("force_mae", "F MAE (meV/Å)"),
          ("virial_rmse_per_atom", "W RMSE (meV/atom)"))


def check_source(source: str) -> bool:
    """True if ``source`` is a local path (which must exist), False for a URL or a registry name."""
    text = str(source)
    looks_local = text.startswith((".", "/", "~")) or ("/" in text and "://" not in text)
    if looks_local and not Path(text).expanduser().exists():
        hint = (" (the demo finetuning expects the demo pretraining export: run `python -m lam.pretrain "
                "+experiment=demo output_dir=outputs/demo/pretrain` first)" if "outputs/demo" in text else "")
        raise FileNotFoundError(f"model.source={text}: no such export directory or .lam file{hint}")
    return looks_local


def load_pretrained(source: str, registry: Any = None, cache: str | None = None) -> nn.Module:
    """Load the model to finetune (``lam.hub`` source) and record where it came from in ``model.source_info``."""
    import lam.hub
    from lam.checkpoint import load
    from lam.hub.download import sha256_file

    text = str(source)
    looks_local = check_source(text)
    folder = lam.hub.resolve_source(Path(text).expanduser() if looks_local else text, registry, cache=cache)
    model = load(folder)
    model.source_info = {"source": text, "resolved": str(folder),  # type: ignore[attr-defined]
                         "weights_sha256": sha256_file(Path(folder) / "model.safetensors")}
    return model


def check_finetune_config(cfg: DictConfig) -> None:
    """Reject conflicting or incomplete finetuning options (before anything is loaded)."""
    check_config(cfg)
    ft, data = cfg.finetune, cfg.data
    if "datasets" in data:
        raise ValueError("data.datasets is a pretraining option; finetuning data has data.train (path or list) "
                         "and optionally data.test: use data=finetune data.train=... or data=water")
    if OmegaConf.is_missing(data, "train"):
        raise ValueError("data.train is required: the downstream training data (path or list of paths)")
    if OmegaConf.is_missing(cfg.model, "source") if "source" in cfg.model else False:
        raise ValueError("model.source is required: export directory, .lam file, URL#sha256=<hex> or hub name")
    if "source" in cfg.model:
        check_source(str(cfg.model.source))
    if OmegaConf.is_missing(ft, "head"):
        raise ValueError("finetune.head is required: an existing head of the pretrained model or a new name")
    from lam.finetune.strategies import STRATEGIES

    if ft.strategy not in STRATEGIES:
        raise ValueError(f"finetune.strategy must be one of {STRATEGIES}, got {ft.strategy!r}")
    if ft.get("learning_curve"):
        if ft.get("replay"):
            raise ValueError("finetune.learning_curve compares against training from scratch on the same data; "
                             "finetune.replay cannot be combined with it")
        if data.get("n_train") is not None:
            raise ValueError("finetune.learning_curve sets the number of training frames per run; "
                             "leave data.n_train unset")
        sizes = list(ft.learning_curve)
        if any(int(n) < 1 for n in sizes) or len(set(sizes)) != len(sizes):
            raise ValueError(f"finetune.learning_curve must list distinct positive frame counts, got {sizes}")
    for k, entry in enumerate(ft.get("replay") or []):
        unknown = set(entry) - {"path", "head", "weight", "loss_weight", "name"}
        if unknown or "path" not in entry or "head" not in entry:
            raise ValueError(f"finetune.replay[{k}] must have 'path' and 'head' (optional 'weight', 'loss_weight', "
                             f"'name'), got {dict(entry)}")
        if not float(entry.get("weight", 1.0)) > 0:
            raise ValueError(f"finetune.replay[{k}].weight must be > 0, got {entry.get('weight')}")


def replay_specs(replay: Sequence[Mapping[str, Any]], directory: Path) -> list[dict[str, Any]]:
    """Data-module entries for replayed pretraining data (non-LAM-H5 files are converted under ``directory``)."""
    from lam.data.formats import guess_format, read_any, write_h5

    specs = []
    for k, entry in enumerate(replay):
        path = Path(str(entry["path"]))
        if not path.exists():
            raise FileNotFoundError(f"finetune.replay[{k}].path: {path} does not exist")
        if guess_format(path) != "lam-h5":
            directory.mkdir(parents=True, exist_ok=True)
            converted = directory / f"replay_{k}_{path.stem}.h5"
            write_h5(converted, read_any(path), head=str(entry["head"]), source=str(path), validate=False)
            path = converted
        specs.append({"path": str(path), "head": str(entry["head"]),
                      "sample_weight": float(entry.get("weight", 1.0)),
                      "loss_weight": float(entry.get("loss_weight", 1.0)),
                      "name": str(entry.get("name") or f"replay_{k}_{path.stem}")})
    return specs


def make_datamodule(data_cfg: Mapping[str, Any], model: nn.Module, train_h5: Path, head: str,
                    replay: Sequence[Mapping[str, Any]] = (), seed: int = 0) -> Any:
    """The training data module: the downstream subset for ``head`` (+ replayed data for other heads)."""
    from lam.train.datamodule import MultiHeadDataModule

    downstream: dict[str, Any] = {"path": str(train_h5), "head": head, "name": "downstream"}
    if replay:
        downstream["sample_weight"] = 1.0
    return MultiHeadDataModule(
        [downstream, *replay], cutoff=float(model.rcut), head_names=model.head_names, dtype=model.dtype,
        batch_size=data_cfg.get("batch_size"), max_atoms=data_cfg.get("max_atoms"),
        val_fraction=float(data_cfg.get("val_fraction", 0.0)), epoch_size=data_cfg.get("epoch_size"),
        num_workers=int(data_cfg.get("num_workers", 0)), seed=seed)


def fit(model: nn.Module, datamodule: Any, cfg: DictConfig, output_dir: Path, optim: Mapping[str, Any],
        run_info: Mapping[str, Any], checkpoints: bool = True, loggers: bool = True,
        ckpt_path: str | None = None) -> Any:
    """Train ``model`` (in place) with the trainer, loss, scheduler and EMA of ``cfg``; returns the module."""
    from lam.train.callbacks import AtomicCheckpointIO
    from lam.train.module import PotentialModule

    resolved_sched = OmegaConf.to_container(cfg.scheduler, resolve=True)
    model.train()  # loaded models come in eval mode; forces need create_graph=True (training mode) to train
    module = PotentialModule(model, instantiate(cfg.loss, _convert_="all"), optimizer=dict(optim),
                             scheduler=resolved_sched, ema_decay=cfg.ema.decay, ema_warmup=cfg.ema.warmup,
                             max_nonfinite_steps=cfg.max_nonfinite_steps, run_info=dict(run_info))
    callbacks: list[Any] = []
    if checkpoints:
        callbacks.append(ModelCheckpoint(dirpath=str(output_dir / "checkpoints"), filename="step{step}",
                                         save_last=True, save_top_k=1, every_n_train_steps=cfg.checkpoint.every_n_steps,
                                         auto_insert_metric_name=False))
    logger_list = [instantiate(e) for e in (cfg.get("logger") or {}).values() if e is not None] if loggers else []
    extra: dict[str, Any] = {}
    if not any(len(v) for v in getattr(datamodule, "val_indices", [[0]])):
        extra["limit_val_batches"] = 0  # no validation split (data.val_fraction=0): test errors come afterwards
    trainer: L.Trainer = instantiate(cfg.trainer, default_root_dir=str(output_dir), callbacks=callbacks,
                                     logger=logger_list or False, enable_checkpointing=checkpoints,
                                     plugins=[AtomicCheckpointIO()], **extra)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    return module


def _resume_path(cfg: DictConfig, output_dir: Path) -> str | None:
    mode = cfg.get("resume", "auto")
    if mode in (None, "never"):
        return None
    if mode == "auto":
        last = output_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    return str(mode)


def test_table(head: str, after: Mapping[str, float], before: Mapping[str, float] | None = None) -> str:
    """Plain-text table of test errors (meV units), ``before → after`` when ``before`` is given."""
    cols = [(k, t) for k, t in _TABLE if k in after]
    header = ["head", *[t for _, t in cols]]
    row = [head]
    for key, _ in cols:
        a = f"{after[key] * 1000:.1f}"
        row.append(f"{before[key] * 1000:.1f} → {a}" if before is not None and key in before else a)
    widths = [max(len(x), len(y)) for x, y in zip(header, row)]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in (header, row)]
    return "\n".join([lines[0], "-" * len(lines[0]), lines[1]])


def load_downstream(cfg: DictConfig) -> DownstreamData:
    """The downstream data of ``cfg.data`` (training pool + fixed test set)."""
    d = cfg.data
    train = OmegaConf.to_container(d.train, resolve=True) if OmegaConf.is_config(d.train) else d.train
    test = OmegaConf.to_container(d.test, resolve=True) if OmegaConf.is_config(d.get("test")) else d.get("test")
    return DownstreamData(train, test, format=d.get("format"), test_fraction=float(d.get("test_fraction", 0.2)),
                          seed=int(d.get("split_seed", cfg.seed)))


def run_finetuning(cfg: DictConfig) -> dict[str, Any]:
    """Finetune, export and report; returns ``{"export_dir", "before", "after", "references", ...}``."""
    from lam.checkpoint import export_model
    from lam.eval import evaluate
    from lam.finetune.bias import refit_element_references
    from lam.finetune.strategies import apply_strategy, prepare_heads
    from lam.runtime import configure_allocator

    check_finetune_config(cfg)
    configure_allocator()
    if cfg.finetune.get("learning_curve"):
        from lam.finetune.learning_curve import run_learning_curve

        return run_learning_curve(cfg)
    output_dir = Path(str(cfg.output_dir)).resolve()
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    ft = cfg.finetune
    head = str(ft.head)

    model = instantiate(cfg.model, _convert_="all")
    source_info = dict(getattr(model, "source_info", {"source": str(cfg.model.get("source"))}))
    data = load_downstream(cfg)
    data.check_elements(model.type_map)
    n_train = cfg.data.get("n_train")
    train_h5, test_h5 = data.write(output_dir / "data", n_train, head)
    train_frames = data.subset(n_train)
    replay = replay_specs(list(ft.get("replay") or []), output_dir / "data")
    plan = prepare_heads(model, head, init_from=ft.get("init_from"), keep_heads=ft.get("keep_heads", "all"),
                         replay_heads=[r["head"] for r in replay])
    ckpt_path = _resume_path(cfg, output_dir)
    refit = None
    if ft.get("refit_references", True) and ckpt_path is None:
        refit = refit_element_references(model, head, train_frames, batch_size=int(ft.eval_batch_size))
    before = None
    if ckpt_path is None:
        before = evaluate(model, data.test, head, batch_size=int(ft.eval_batch_size)).metrics
    counts = apply_strategy(model, str(ft.strategy), [head, *[r["head"] for r in replay]])
    datamodule = make_datamodule(cfg.data, model, train_h5, head, replay, seed=int(cfg.seed))
    run_info = {"config": resolved, "finetune": {"source": source_info, "heads": plan.to_dict(),
                                                 "strategy": str(ft.strategy), "parameters": counts,
                                                 "references": refit.to_dict() if refit else None},
                "datasets": datamodule.summary()}
    t0 = time.perf_counter()
    module = fit(model, datamodule, cfg, output_dir, resolved["optim"], run_info, ckpt_path=ckpt_path)
    seconds = time.perf_counter() - t0
    final = module.ema_model()
    after = evaluate(final, data.test, head, batch_size=int(ft.eval_batch_size)).metrics
    export_dir = output_dir / "export"
    if module.trainer.is_global_zero:
        export_model(final, export_dir, config=resolved,
                     extra={"finetune": {**run_info["finetune"], "test_before": before, "test_after": after,
                                         "n_train": len(train_frames), "n_test": len(data.test),
                                         "train_seconds": seconds},
                            "metrics": {f"test/{head}/{k}": v for k, v in after.items()},
                            "global_step": module.trainer.global_step})
        print(f"\nTest errors on {len(data.test)} frames ({len(train_frames)} training frames, "
              f"{module.trainer.global_step} steps, {seconds:.0f} s, strategy {ft.strategy}"
              + (", before → after finetuning" if before else "") + "):")
        print(test_table(head, after, before))
        if refit is not None:
            print(f"Element references of head {head} re-fitted: residual "
                  f"{refit.residual_rms_per_atom_before * 1000:.1f} → {refit.residual_rms_per_atom_after * 1000:.1f} "
                  "meV/atom on the training frames")
        print(f"\nExported model: {export_dir}   (heads {final.head_names}; load with lam.load({str(export_dir)!r}))")
    return {"export_dir": export_dir, "before": before, "after": after, "references": refit, "plan": plan,
            "parameters": counts, "test_path": test_h5, "train_path": train_h5, "seconds": seconds}
