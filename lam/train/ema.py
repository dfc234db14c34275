"""Exponential moving average (EMA) of model weights.

The average is kept for every floating-point parameter that requires a gradient; buffers (element
references, statistics) are not averaged, they are always those of the live model. The averaged weights are
the ones validated and exported; the trainer keeps optimising the live weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ExponentialMovingAverage"]


class ExponentialMovingAverage:
    """``shadow ← d·shadow + (1 − d)·param`` after every optimiser step.

    Args:
        model: the module whose parameters are averaged (the shadow starts as a copy of them).
        decay: the decay ``d`` in [0, 1); 0 keeps no history (the shadow equals the weights).
        warmup: if True the effective decay is ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so
            that early averages are not dominated by the random initial weights.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.shadow: dict[str, Tensor] = {
            name: p.detach().clone() for name, p in self._params(model)
        }

    @staticmethod
    def _params(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
        for name, p in model.named_parameters():
            if p.requires_grad and p.is_floating_point():
                yield name, p

    def _check_names(self, model: nn.Module) -> dict[str, nn.Parameter]:
        params = dict(self._params(model))
        if params.keys() != self.shadow.keys():
            missing = sorted(set(params) - set(self.shadow))
            extra = sorted(set(self.shadow) - set(params))
            raise RuntimeError(
                "EMA weights do not match the model's trainable parameters "
                f"(model-only: {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"EMA-only: {extra[:5]}{'...' if len(extra) > 5 else ''}); "
                "was a head added or the descriptor frozen after the EMA was created?"
            )
        return params

    def current_decay(self) -> float:
        """The decay used by the next update."""
        if self.warmup:
            return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Blend the model's current parameters into the average."""
        params = self._check_names(model)
        d = self.current_decay()
        for name, p in params.items():
            s = self.shadow[name]
            if s.device != p.device or s.dtype != p.dtype:
                s = self.shadow[name] = s.to(device=p.device, dtype=p.dtype)
            s.lerp_(p.detach(), 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's parameters with the averages."""
        for name, p in self._check_names(model).items():
            p.copy_(self.shadow[name].to(device=p.device, dtype=p.dtype))

    @contextmanager
    def average_parameters(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily swap the averaged weights into ``model`` (restored on exit, also on error)."""
        params = self._check_names(model)
        backup = {name: p.detach().clone() for name, p in params.items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(backup[name])

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers (safe to save with ``torch.save`` or safetensors)."""
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "shadow": {k: v.detach().clone() for k, v in self.shadow.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state written by :meth:`state_dict`; parameter names must match."""
        shadow = state["shadow"]
        if shadow.keys() != self.shadow.keys():
            raise RuntimeError(
                "EMA state does not match the model: "
                f"{len(set(shadow) ^ set(self.shadow))} parameter name(s) differ, "
                f"e.g. {sorted(set(shadow) ^ set(self.shadow))[:3]}"
            )
        for k, v in shadow.items():
            if v.shape != self.shadow[k].shape:
                raise RuntimeError(f"EMA state: parameter {k!r} has shape {tuple(v.shape)}, "
                                   f"the model has {tuple(self.shadow[k].shape)}")
            self.shadow[k] = v.detach().clone().to(device=self.shadow[k].device, dtype=self.shadow[k].dtype)
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
