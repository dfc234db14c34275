"""Which head to train, which heads to keep, and which parameters to train.

* :func:`prepare_heads`: inherit an existing head, or add a new one (copied from ``init_from`` or randomly
  initialised); keep all other heads, none, or a list. Conflicting options raise ``ValueError``.
* :func:`apply_strategy`: ``full`` trains every parameter; ``frozen_descriptor`` freezes the descriptor and
  trains the fitting heads (and a direct-force head); ``heads_only`` trains only the heads that have training
  data (the finetuned head and any replayed heads) and freezes everything else.

Apply both before the :class:`~lam.train.module.PotentialModule` is built: its EMA tracks exactly the
parameters that are trainable at that moment.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

__all__ = ["STRATEGIES", "HeadPlan", "apply_strategy", "parse_keep_heads", "prepare_heads"]

log = logging.getLogger(__name__)

STRATEGIES = ("full", "frozen_descriptor", "heads_only")
"""Accepted values of ``finetune.strategy``."""


@dataclass
class HeadPlan:
    """What :func:`prepare_heads` did: ``mode`` is ``"inherit"`` or ``"new"``."""

    head: str
    mode: str
    init_from: str | None
    kept: list[str]
    removed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"head": self.head, "mode": self.mode, "init_from": self.init_from, "kept": list(self.kept),
                "removed": list(self.removed)}


def parse_keep_heads(keep_heads: str | Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """``"all"`` → every head, ``"none"`` (or ``None``) → no other head, or an explicit list (checked)."""
    if keep_heads is None or (isinstance(keep_heads, str) and keep_heads.lower() == "none"):
        return []
    if isinstance(keep_heads, str):
        if keep_heads.lower() == "all":
            return list(available)
        raise ValueError(f"finetune.keep_heads must be 'all', 'none' or a list of heads, got {keep_heads!r}")
    names = [str(h) for h in keep_heads]
    unknown = [h for h in names if h not in available]
    if unknown:
        raise ValueError(f"finetune.keep_heads names {unknown}, which the pretrained model does not have "
                         f"(heads: {list(available)})")
    return names


def prepare_heads(model: nn.Module, head: str, init_from: str | None = None,
                  keep_heads: str | Sequence[str] | None = "all",
                  replay_heads: Sequence[str] = ()) -> HeadPlan:
    """Select or add the finetuned head and drop the heads that are not kept (in place).

    Args:
        model: a :class:`~lam.models.potential.Potential` loaded from a checkpoint.
        head: an existing head (its weights and references are inherited) or a new name.
        init_from: for a new head, the existing head to copy; ``None`` initialises it randomly (seeded by the
            global torch RNG). Giving it for an existing head is an error.
        keep_heads: ``"all"``, ``"none"`` or a list of the other heads to keep.
        replay_heads: heads that receive replayed pretraining data; they must be kept.
    """
    if not head or not isinstance(head, str):
        raise ValueError(f"finetune.head must be a head name, got {head!r}")
    available = list(model.head_names)
    inherit = head in available
    if inherit and init_from is not None:
        raise ValueError(f"finetune.init_from={init_from!r} applies to a new head only, but head {head!r} exists "
                         f"in the pretrained model and is inherited; drop init_from or pick a new head name")
    if init_from is not None and init_from not in available:
        raise ValueError(f"finetune.init_from={init_from!r} is not a head of the pretrained model {available}")
    kept = [h for h in parse_keep_heads(keep_heads, available) if h != head]
    for h in replay_heads:
        if h == head:
            raise ValueError(f"replay entry trains head {h!r}, the finetuned head itself: put that data in `data` "
                             "instead; replay is for keeping other heads")
        if h not in available:
            raise ValueError(f"replay entry names head {h!r}, which the pretrained model does not have {available}")
        if h not in kept:
            raise ValueError(f"replay entry trains head {h!r} but finetune.keep_heads drops it; keep it "
                             f"(keep_heads=all or list it) or remove the replay entry")
    if not inherit:
        model.add_head(head, init_from=init_from)
    removed = [h for h in available if h != head and h not in kept]
    for h in removed:
        model.remove_head(h)
    plan = HeadPlan(head=head, mode="inherit" if inherit else "new", init_from=init_from,
                    kept=[h for h in model.head_names if h != head], removed=removed)
    log.info("finetune head %s (%s%s); kept heads %s, removed %s", head, plan.mode,
             f" from {init_from}" if init_from else "", plan.kept, removed)
    return plan


def apply_strategy(model: nn.Module, strategy: str, train_heads: Sequence[str]) -> dict[str, int]:
    """Set ``requires_grad`` of every parameter for ``strategy``; returns trainable / frozen parameter counts."""
    if strategy not in STRATEGIES:
        raise ValueError(f"finetune.strategy must be one of {STRATEGIES}, got {strategy!r}")
    unknown = [h for h in train_heads if h not in model.head_names]
    if unknown:
        raise ValueError(f"heads {unknown} are not heads of the model {model.head_names}")
    for p in model.parameters():
        p.requires_grad_(strategy == "full")
    if strategy == "frozen_descriptor":
        for name, module in model.named_children():
            if name != "descriptor":
                for p in module.parameters():
                    p.requires_grad_(True)
    elif strategy == "heads_only":
        for h in train_heads:
            for p in model.heads[h].parameters():
                p.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    if trainable == 0:
        raise ValueError(f"strategy {strategy!r} leaves no trainable parameter")
    log.info("strategy %s: %d trainable parameters, %d frozen", strategy, trainable, frozen)
    return {"trainable": trainable, "frozen": frozen}
