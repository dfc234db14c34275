"""Callbacks, loggers and checkpoint I/O helpers of the training job."""

from __future__ import annotations

import hashlib
import json
import netrc
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "SeenFramesRecorder", "ValidationHistory", "make_wandb_logger", "weights_digest",
           "wandb_mode"]


def wandb_mode() -> str:
    """``WANDB_MODE`` if set, ``"online"`` when an API key is available (env or ~/.netrc), else ``"offline"``."""
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        auth = netrc.netrc().authenticators("api.wandb.ai")
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        auth = None
    return "online" if auth else "offline"


def make_wandb_logger(save_dir: str, project: str = "lam", name: str | None = None, mode: str = "auto",
                      **kwargs: Any) -> L.pytorch.loggers.WandbLogger:
    """A ``WandbLogger``; ``mode="auto"`` logs online only when the user is logged in (see :func:`wandb_mode`)."""
    from lightning.pytorch.loggers import WandbLogger

    resolved = wandb_mode() if mode == "auto" else mode
    if resolved not in ("online", "offline", "disabled"):
        raise ValueError(f"wandb mode must be auto, online, offline or disabled, got {mode!r}")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(save_dir=save_dir, project=project, name=name, offline=resolved == "offline",
                       mode=resolved if resolved == "disabled" else None, **kwargs)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes checkpoints to a temporary file and renames it, so a run killed mid-save keeps the last good one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        torch.save(checkpoint, tmp)
        os.replace(tmp, target)


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 of all parameters and buffers (names, shapes and bytes), to compare models across processes."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class SeenFramesRecorder(L.Callback):
    """Appends one JSON line per training step to ``<dir>/rank<r>.jsonl``: step, frame ids seen, loss, pid.

    At the end of training it writes ``<dir>/rank<r>_final.json`` with the digest of the final weights, so a
    test (or a suspicious user) can check that DDP ranks saw different frames and ended with identical
    weights, and that a resumed run repeats the uninterrupted run's losses. Lines are flushed as they are
    written, so a killed run keeps its record.
    """

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)
        self._ids: list[int] = []
        self._step = 0

    def _path(self, trainer: L.Trainer, suffix: str) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        return self.directory / f"rank{trainer.global_rank}{suffix}"

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._ids = batch["sample_id"].reshape(-1).tolist() if "sample_id" in batch else []
        self._step = int(trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        record = {"step": self._step, "sample_ids": self._ids, "pid": os.getpid(),
                  "loss": None if loss is None else float(loss.detach())}
        with self._path(trainer, ".jsonl").open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = getattr(pl_module, "model", pl_module)
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size,
                  "global_step": trainer.global_step, "weights_sha256": weights_digest(model)}
        self._path(trainer, "_final.json").write_text(json.dumps(record))


class ValidationHistory(L.Callback):
    """Keeps the validation metrics (``val/...``) of every validation run, for the final summary table."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if row:
            row["step"] = float(trainer.global_step)
            self.history.append(row)
