"""Finetuning of pretrained multi-head models (``python -m lam.finetune``).

* :mod:`lam.finetune.bias` — re-fit a head's element energy references on downstream data;
* :mod:`lam.finetune.strategies` — inherit / add heads, keep or drop the others, which parameters train;
* :mod:`lam.finetune.data` — downstream training pool, fixed test set, nested subsets;
* :mod:`lam.finetune.job` — the job behind the entry point; :mod:`lam.finetune.learning_curve` — the
  few-shot comparison of a pretrained and a from-scratch model.

See ``docs/recipes/finetune.md``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DownstreamData", "ReferenceFit", "STRATEGIES", "apply_strategy", "load_pretrained", "prepare_heads",
           "refit_element_references", "run_finetuning", "run_learning_curve"]

_LAZY = {
    "DownstreamData": "lam.finetune.data",
    "ReferenceFit": "lam.finetune.bias",
    "refit_element_references": "lam.finetune.bias",
    "STRATEGIES": "lam.finetune.strategies",
    "apply_strategy": "lam.finetune.strategies",
    "prepare_heads": "lam.finetune.strategies",
    "load_pretrained": "lam.finetune.job",
    "run_finetuning": "lam.finetune.job",
    "run_learning_curve": "lam.finetune.learning_curve",
}


def __getattr__(name: str) -> Any:
    """Lazy exports: importing ``lam.finetune`` does not import Lightning or Hydra."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lam.finetune' has no attribute {name!r}")
