"""One generic LightningModule that trains any ``Potential`` (it never names an architecture).

* the loss (:class:`~lam.train.loss.PotentialLoss`) follows the learning-rate decay through its prefactors;
* a non-finite loss or gradient skips the optimiser step on every rank (the decision is shared), is logged
  and counted; ``max_nonfinite_steps`` skips in a row abort the run with a clear message;
* validation runs with the EMA weights and logs per-head errors as ``val/<head>/<metric>``;
* checkpoints carry the EMA state, the resolved run configuration and the data hashes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import torchmetrics
from torch import Tensor, nn

import lam
from lam.data import keys as K
from lam.train.ema import ExponentialMovingAverage
from lam.train.loss import HeadMetrics, PotentialLoss
from lam.train.optim import LRSchedule, build_optimizer, build_scheduler

__all__ = ["NonFiniteLossError", "PotentialModule"]

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised after too many optimiser steps in a row were skipped for a non-finite loss or gradient."""


class PotentialModule(L.LightningModule):
    """Train a potential ``model(batch, compute_forces=..., compute_virial=...) -> dict``.

    Args:
        model: the potential; needs ``head_names`` and the output keys of :mod:`lam.data.keys`.
        loss: the loss (default: energy, forces and virial with DeePMD-kit's prefactors).
        optimizer: keyword arguments of :func:`lam.train.optim.build_optimizer` (name, lr, weight_decay…).
        scheduler: keyword arguments of :func:`lam.train.optim.build_scheduler` except ``total_steps``,
            which is the trainer's number of optimiser steps.
        ema_decay: decay of the weight EMA used for validation and export; ``None`` disables the EMA.
        ema_warmup: ramp the EMA decay up over the first updates.
        max_nonfinite_steps: abort after this many skipped steps in a row.
        run_info: JSON-serialisable information saved in every checkpoint (resolved config, data hashes).
    """

    def __init__(
        self,
        model: nn.Module,
        loss: PotentialLoss | None = None,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        ema_decay: float | None = 0.999,
        ema_warmup: bool = True,
        max_nonfinite_steps: int = 10,
        run_info: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps must be >= 1, got {max_nonfinite_steps}")
        self.model = model
        self.loss = loss if loss is not None else PotentialLoss.default()
        self.optimizer_cfg = dict(optimizer or {})
        self.scheduler_cfg = dict(scheduler or {})
        if "total_steps" in self.scheduler_cfg:
            raise ValueError("scheduler.total_steps is set by the trainer (max_steps / epochs); do not set it")
        self.head_names = list(model.head_names)
        self.ema = ExponentialMovingAverage(model, ema_decay, ema_warmup) if ema_decay is not None else None
        self.max_nonfinite_steps = int(max_nonfinite_steps)
        self.run_info = dict(run_info or {})
        self.val_metrics = HeadMetrics(self.head_names)
        self.val_loss = torchmetrics.MeanMetric()
        self.schedule: LRSchedule | None = None
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self._skip_step = False
        self._ema_swap: ExitStack | None = None

    # ------------------------------------------------------------------ forward
    def forward(self, batch: Any, compute_forces: bool = True, compute_virial: bool = False) -> dict[str, Tensor]:
        kwargs: dict[str, Any] = {"compute_forces": compute_forces, "compute_virial": compute_virial}
        if self.loss.needs_direct_forces:
            kwargs["compute_direct"] = True
        return self.model(batch, **kwargs)

    def _predict(self, batch: Any) -> dict[str, Tensor]:
        want_virial = K.HAS_VIRIAL in batch and bool(batch[K.HAS_VIRIAL].any())
        want_forces = self.loss.needs_forces or not self.loss.needs_direct_forces
        return self(batch, compute_forces=want_forces, compute_virial=want_virial)

    def lr_ratio(self) -> float:
        """``lr / lr0`` of the decay schedule (without warmup) at the current step; 1 before training."""
        return self.schedule.decay_factor(self.global_step) if self.schedule is not None else 1.0

    # ------------------------------------------------------------------ training
    def _all_finite(self, value: Tensor) -> bool:
        flag = torch.isfinite(value.detach()).all().to(torch.float32).reshape(1)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() > 0)

    def _register_skip(self, why: str) -> None:
        self._skip_step = True
        self.nonfinite_in_a_row += 1
        self.nonfinite_total += 1
        log.warning("step %d: %s; optimiser step skipped (%d in a row, %d in total)", self.global_step, why,
                    self.nonfinite_in_a_row, self.nonfinite_total)
        if self.nonfinite_in_a_row >= self.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{self.nonfinite_in_a_row} optimiser steps in a row had a non-finite loss or gradient "
                f"(last at step {self.global_step}, epoch {self.current_epoch}): training diverged. Lower the "
                "learning rate, check the data for bad labels, enable gradient clipping, or raise "
                "max_nonfinite_steps."
            )

    def on_fit_start(self) -> None:
        # Lightning keeps submodules in the mode it finds them; a model loaded for finetuning comes in eval
        # mode (inference), where forces are not differentiable. Training needs train mode.
        self.model.train()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        self._skip_step = False
        pred = self._predict(batch)
        loss, parts = self.loss(pred, batch, self.lr_ratio())
        n_graphs = int(batch[K.HEAD].shape[0])
        if not self._all_finite(loss):
            self._register_skip(f"non-finite training loss {loss.item()}")
            self.log("train/nonfinite_skips", float(self.nonfinite_total), batch_size=n_graphs)
            # A zero that reaches every parameter, so that a distributed backward still completes.
            return sum((p.sum() * 0.0 for p in self.model.parameters() if p.requires_grad), torch.zeros(()))
        if self.trainer.world_size > 1:
            # Heads absent from this rank's batch get no gradient; DDP needs every parameter in the graph.
            # A zero through each parameter gives them a zero gradient (what find_unused_parameters would do).
            loss = loss + sum((p.reshape(-1)[:1].sum() * 0.0 for p in self.model.parameters()
                               if p.requires_grad), torch.zeros((), device=loss.device, dtype=loss.dtype))
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=n_graphs)
        self.log_dict({f"train/{k}": v for k, v in parts.items()}, batch_size=n_graphs)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"] if self._trainer else 0.0,
                 batch_size=n_graphs)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if not self._skip_step:
            grads = [p.grad for p in params if p.grad is not None]
            if grads and not self._all_finite(torch.stack(torch._foreach_norm(grads))):
                self._register_skip("non-finite gradient")
        if self._skip_step:
            for p in params:  # Adam/AdamW leave parameters without a gradient untouched (state included)
                p.grad = None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._skip_step:
            return
        self.nonfinite_in_a_row = 0
        if self.ema is not None:
            self.ema.update(self.model)

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        if self.ema is not None:
            self._ema_swap = ExitStack()
            self._ema_swap.enter_context(self.ema.average_parameters(self.model))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if torch.is_inference_mode_enabled():
            raise RuntimeError("validation needs autograd for forces: create the Trainer with inference_mode=False")
        with torch.enable_grad():
            pred = self._predict(batch)
        loss, _ = self.loss({k: v.detach() for k, v in pred.items()}, batch, self.lr_ratio())
        self.val_metrics.update(pred, batch)
        self.val_loss.update(loss.detach(), weight=int(batch[K.HEAD].shape[0]))

    def on_validation_epoch_end(self) -> None:
        try:
            values = {f"val/{k}": v for k, v in self.val_metrics.compute().items()}
            values["val/loss"] = self.val_loss.compute()
            self.log_dict(values, prog_bar=False, sync_dist=False)  # already summed over ranks
            self.val_metrics.reset()
            self.val_loss.reset()
        finally:
            if self._ema_swap is not None:
                self._ema_swap.close()
                self._ema_swap = None

    # ------------------------------------------------------------------ optimisers / checkpoints
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.model.parameters(), **self.optimizer_cfg)
        total = self.trainer.estimated_stepping_batches
        if total == float("inf"):
            raise ValueError("the learning-rate schedule needs a finite run: set trainer.max_steps or max_epochs")
        scheduler, self.schedule = build_scheduler(optimizer, total_steps=int(total), **self.scheduler_cfg)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lam"] = {
            "lam_version": lam.__version__,
            "torch_version": str(torch.__version__),
            "head_names": self.head_names,
            "loss": self.loss.to_config(),
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "nonfinite_total": self.nonfinite_total,
            **self.run_info,
        }
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        info = checkpoint.get("lam", {})
        saved_heads = info.get("head_names")
        if saved_heads is not None and list(saved_heads) != self.head_names:
            raise RuntimeError(f"checkpoint was trained with heads {saved_heads}, this model has {self.head_names}")
        self.nonfinite_in_a_row = int(info.get("nonfinite_in_a_row", 0))
        self.nonfinite_total = int(info.get("nonfinite_total", 0))
        if self.ema is not None:
            if "ema" not in checkpoint:
                raise RuntimeError("checkpoint has no EMA state but this run uses an EMA (ema_decay is set)")
            self.ema.load_state_dict(checkpoint["ema"])

    def ema_model(self) -> nn.Module:
        """A copy of the model carrying the EMA weights (the live model if there is no EMA)."""
        import copy

        clone = copy.deepcopy(self.model)
        if self.ema is not None:
            self.ema.copy_to(clone)
        return clone
