"""lam: large atomic models — multi-head DPA-2 pretraining, finetuning and distillation."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["LAMCalculator", "__version__", "build_model", "load"]


def __getattr__(name: str) -> Any:
    """Lazy public exports: ``import lam`` stays light (no torch import until a model is needed)."""
    if name == "build_model":
        from lam.models.builder import build_model

        return build_model
    if name == "LAMCalculator":
        from lam.md.calculator import LAMCalculator

        return LAMCalculator
    if name == "load":
        # name | path | URL: resolved (downloaded, verified, cached) by the hub, then loaded without pickle
        from lam.hub import load

        return load
    raise AttributeError(f"module 'lam' has no attribute {name!r}")
