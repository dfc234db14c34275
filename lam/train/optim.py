"""Optimisers and learning-rate schedules (warmup, then exponential or cosine decay, or constant).

Gradient clipping is Lightning's (``trainer.gradient_clip_val``), not done here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["LRSchedule", "build_optimizer", "build_scheduler"]

_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def build_optimizer(
    params: Iterable[nn.Parameter],
    name: str = "adamw",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    betas: tuple[float, float] | list[float] = (0.9, 0.999),
    eps: float = 1e-8,
    amsgrad: bool = False,
) -> torch.optim.Optimizer:
    """Adam or AdamW over ``params`` (only those that require a gradient)."""
    key = name.lower()
    if key not in _OPTIMIZERS:
        raise ValueError(f"optimizer name must be one of {sorted(_OPTIMIZERS)}, got {name!r}")
    if not lr > 0:
        raise ValueError(f"optimizer lr must be > 0, got {lr}")
    if key == "adam" and weight_decay:
        raise ValueError("weight_decay with 'adam' is L2 regularisation through the gradient; use 'adamw' "
                         "for decoupled weight decay, or set weight_decay=0")
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        raise ValueError("no trainable parameters (is everything frozen?)")
    return _OPTIMIZERS[key](trainable, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps,
                            amsgrad=amsgrad)


class LRSchedule:
    """Learning-rate factor ``lr(step) / lr0`` (a picklable callable for ``LambdaLR``).

    * ``kind="exponential"``: ``decay_rate ** (step // decay_steps)`` where ``decay_rate`` is chosen so that
      the factor reaches ``stop_lr_ratio`` at ``total_steps`` (DeePMD-kit's staircase schedule).
    * ``kind="cosine"``: from 1 down to ``stop_lr_ratio`` over ``total_steps`` along a half cosine.
    * ``kind="constant"``: 1.

    A linear warmup from 0 over ``warmup_steps`` multiplies the factor. :meth:`decay_factor` is the factor
    without the warmup: the loss prefactors follow it, so they start at their ``start`` values.
    """

    def __init__(
        self,
        kind: str = "exponential",
        total_steps: int = 1,
        warmup_steps: int = 0,
        stop_lr_ratio: float = 1e-2,
        decay_steps: int = 1,
    ) -> None:
        if kind not in ("exponential", "cosine", "constant"):
            raise ValueError(f"scheduler kind must be 'exponential', 'cosine' or 'constant', got {kind!r}")
        if total_steps < 1:
            raise ValueError(f"scheduler total_steps must be >= 1, got {total_steps}")
        if warmup_steps < 0 or (warmup_steps > 0 and warmup_steps >= total_steps):
            raise ValueError(f"scheduler warmup_steps must be in [0, total_steps={total_steps}), got {warmup_steps}")
        if not 0 < stop_lr_ratio <= 1:
            raise ValueError(f"scheduler stop_lr_ratio must be in (0, 1], got {stop_lr_ratio}")
        if decay_steps < 1:
            raise ValueError(f"scheduler decay_steps must be >= 1, got {decay_steps}")
        self.kind = kind
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.stop_lr_ratio = float(stop_lr_ratio)
        self.decay_steps = int(decay_steps)
        n_decays = max((self.total_steps - self.warmup_steps) / self.decay_steps, 1.0)
        self.decay_rate = self.stop_lr_ratio ** (1.0 / n_decays)

    def decay_factor(self, step: int) -> float:
        """The decayed factor at ``step``, without the warmup ramp."""
        t = max(step - self.warmup_steps, 0)
        if self.kind == "constant":
            return 1.0
        if self.kind == "exponential":
            return max(self.decay_rate ** (t // self.decay_steps), self.stop_lr_ratio)
        span = max(self.total_steps - self.warmup_steps, 1)
        frac = min(t / span, 1.0)
        return self.stop_lr_ratio + (1.0 - self.stop_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))

    def __call__(self, step: int) -> float:
        ramp = min((step + 1) / self.warmup_steps, 1.0) if self.warmup_steps else 1.0
        return ramp * self.decay_factor(step)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    kind: str = "exponential",
    warmup_steps: int = 0,
    stop_lr_ratio: float = 1e-2,
    decay_steps: int = 1,
) -> tuple[torch.optim.lr_scheduler.LambdaLR, LRSchedule]:
    """A per-step ``LambdaLR`` and its :class:`LRSchedule` (the loss reads ``decay_factor`` from it)."""
    schedule = LRSchedule(kind, total_steps, warmup_steps, stop_lr_ratio, decay_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), schedule
