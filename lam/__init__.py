"""lam: large atomic models — multi-head DPA-2 pretraining, finetuning and distillation."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
