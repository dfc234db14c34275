"""Training loss with scheduled prefactors, and error metrics per head.

The loss is a sum of terms, one per quantity (``energy`` per atom, conservative ``forces``, ``virial`` per
atom, ``direct_forces`` of a hybrid direct-force head against the labels, ``direct_consistency`` of the
direct forces against the model's own ``-dE/dr``), each weighted by a prefactor that follows the learning
rate (DeePMD-kit's schedule)::

    pref(t) = limit_pref + (start_pref - limit_pref) * lr(t) / lr0

Labels a frame does not have (``has_energy``/``has_forces``/``has_virial`` False) are masked out, never
filled in; every frame carries a loss ``weight``. Each term is the weighted mean of an elementwise MSE or
Huber penalty over the labelled entries of the batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor

from lam.data import keys as K

__all__ = ["QUANTITIES", "HeadMetrics", "LossTerm", "PotentialLoss", "atoms_per_graph"]

QUANTITIES = ("energy", "forces", "virial", "direct_forces", "direct_consistency")
"""Names of the loss terms, in the order they are evaluated."""

_DEFAULT_PREFS = {"energy": (0.02, 1.0), "forces": (1000.0, 1.0), "virial": (0.02, 1.0), "direct_forces": (1000.0, 1.0),
                  "direct_consistency": (100.0, 100.0)}


@dataclass(frozen=True)
class LossTerm:
    """One loss term: prefactor schedule and penalty (``mse`` or ``huber`` with ``huber_delta``)."""

    start_pref: float
    limit_pref: float
    kind: str = "mse"
    huber_delta: float = 0.01

    def __post_init__(self) -> None:
        if self.kind not in ("mse", "huber"):
            raise ValueError(f"loss term kind must be 'mse' or 'huber', got {self.kind!r}")
        if self.start_pref < 0 or self.limit_pref < 0:
            raise ValueError(f"loss prefactors must be >= 0, got start {self.start_pref}, limit {self.limit_pref}")
        if self.kind == "huber" and not self.huber_delta > 0:
            raise ValueError(f"huber_delta must be > 0, got {self.huber_delta}")

    def prefactor(self, lr_ratio: float) -> float:
        """``limit + (start - limit) * lr / lr0``."""
        return self.limit_pref + (self.start_pref - self.limit_pref) * float(lr_ratio)

    def penalty(self, err: Tensor) -> Tensor:
        """Elementwise penalty of an error tensor."""
        if self.kind == "mse":
            return err.square()
        return F.huber_loss(err, torch.zeros_like(err), reduction="none", delta=self.huber_delta)


def _as_term(name: str, spec: LossTerm | Mapping[str, Any] | None) -> LossTerm | None:
    if spec is None or isinstance(spec, LossTerm):
        return spec
    if not isinstance(spec, Mapping):
        raise TypeError(f"loss term {name!r} must be a mapping, a LossTerm or None, got {type(spec).__name__}")
    allowed = {f.name for f in fields(LossTerm)}
    unknown = set(spec) - allowed
    if unknown:
        raise ValueError(f"loss term {name!r} has unknown option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    start, limit = _DEFAULT_PREFS[name]
    return LossTerm(**{"start_pref": start, "limit_pref": limit, **dict(spec)})


def atoms_per_graph(batch: Any) -> Tensor:
    """(G,) number of atoms of each graph of a batch (from ``ptr``)."""
    ptr = batch[K.PTR]
    return (ptr[1:] - ptr[:-1]).to(batch[K.POSITIONS].dtype)


def _weighted_mean(values: Tensor, weights: Tensor) -> Tensor:
    """``sum(w * v) / sum(w)`` over entries with ``w > 0``; a graph-connected zero when nothing is labelled."""
    denom = weights.sum()
    return (weights * values).sum() / denom.clamp_min(torch.finfo(values.dtype).tiny)


class PotentialLoss:
    """Sum of scheduled loss terms; a term set to ``None`` is off.

    Args:
        energy: energy-per-atom term (default prefactors 0.02 → 1).
        forces: conservative force term, ``-dE/dr`` (default 1000 → 1).
        virial: virial-per-atom term, only on frames with a virial label (default 0.02 → 1).
        direct_forces: term on the ``direct_forces`` output of a direct-force head (default off; set it to
            ``{}`` for the default 1000 → 1). With ``forces`` off this trains direct forces only.
        direct_consistency: term on ``direct_forces - (-dE/dr)`` with the conservative forces detached (default
            off; ``{}`` gives a constant 100): what multiple time stepping needs, since its outer step corrects
            the direct forces by exactly that difference. Needs no labels (every frame counts, by its weight);
            computes the conservative forces even when ``forces`` is off.
    """

    def __init__(
        self,
        energy: LossTerm | Mapping[str, Any] | None = None,
        forces: LossTerm | Mapping[str, Any] | None = None,
        virial: LossTerm | Mapping[str, Any] | None = None,
        direct_forces: LossTerm | Mapping[str, Any] | None = None,
        direct_consistency: LossTerm | Mapping[str, Any] | None = None,
    ) -> None:
        specs = {"energy": energy, "forces": forces, "virial": virial, "direct_forces": direct_forces,
                 "direct_consistency": direct_consistency}
        self.terms: dict[str, LossTerm] = {}
        for name in QUANTITIES:
            term = _as_term(name, specs[name])
            if term is not None:
                self.terms[name] = term
        if not self.terms:
            raise ValueError("the loss has no term: set at least one of " + ", ".join(QUANTITIES))

    @classmethod
    def default(cls) -> PotentialLoss:
        """Energy, forces and virial with DeePMD-kit's default prefactors."""
        return cls(energy={}, forces={}, virial={})

    @property
    def needs_forces(self) -> bool:
        return "forces" in self.terms or "direct_consistency" in self.terms

    @property
    def needs_virial(self) -> bool:
        return "virial" in self.terms

    @property
    def needs_direct_forces(self) -> bool:
        return "direct_forces" in self.terms or "direct_consistency" in self.terms

    def to_config(self) -> dict[str, dict[str, Any]]:
        """The terms as plain dicts (for checkpoints and exported metadata)."""
        return {name: asdict(term) for name, term in self.terms.items()}

    def __repr__(self) -> str:
        return f"PotentialLoss({self.to_config()})"

    def term_losses(self, pred: Mapping[str, Tensor], batch: Any) -> dict[str, Tensor]:
        """Unscaled value of every term (weighted mean penalty over labelled entries)."""
        out: dict[str, Tensor] = {}
        natoms = atoms_per_graph(batch)
        weight = batch[K.WEIGHT].to(natoms.dtype)
        atom_graph = batch[K.BATCH]
        for name, term in self.terms.items():
            if name == "energy":
                mask = batch[K.HAS_ENERGY].to(natoms.dtype) * weight
                err = (pred[K.ENERGY] - batch[K.ENERGY]) / natoms
                out[name] = _weighted_mean(term.penalty(err), mask)
            elif name in ("forces", "direct_forces"):
                key = K.FORCES if name == "forces" else K.DIRECT_FORCES
                if key not in pred:
                    raise KeyError(f"loss term {name!r} needs the model output {key!r}, which is missing")
                mask = (batch[K.HAS_FORCES].to(natoms.dtype) * weight)[atom_graph]
                pen = term.penalty(pred[key] - batch[K.FORCES]).mean(dim=-1)
                out[name] = _weighted_mean(pen, mask)
            elif name == "direct_consistency":
                for key in (K.FORCES, K.DIRECT_FORCES):
                    if key not in pred:
                        raise KeyError(f"loss term 'direct_consistency' needs the model output {key!r}, "
                                       "which is missing")
                pen = term.penalty(pred[K.DIRECT_FORCES] - pred[K.FORCES].detach()).mean(dim=-1)
                out[name] = _weighted_mean(pen, weight[atom_graph])
            else:  # virial
                mask = batch[K.HAS_VIRIAL].to(natoms.dtype) * weight
                if bool(mask.any()):
                    if K.VIRIAL not in pred:
                        raise KeyError("loss term 'virial' needs the model output 'virial', which is missing")
                    err = (pred[K.VIRIAL] - batch[K.VIRIAL]) / natoms[:, None, None]
                    out[name] = _weighted_mean(term.penalty(err).flatten(1).mean(dim=-1), mask)
                else:
                    out[name] = pred[K.ENERGY].sum() * 0.0
        return out

    def __call__(
        self, pred: Mapping[str, Tensor], batch: Any, lr_ratio: float = 1.0
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and its parts (``loss/<term>`` unscaled, ``pref/<term>`` prefactors), parts detached."""
        parts = self.term_losses(pred, batch)
        total = None
        logs: dict[str, Tensor] = {}
        for name, value in parts.items():
            pref = self.terms[name].prefactor(lr_ratio)
            total = pref * value if total is None else total + pref * value
            logs[f"loss/{name}"] = value.detach()
            logs[f"pref/{name}"] = torch.tensor(pref)
        assert total is not None
        return total, logs


# Columns of the accumulated error sums of HeadMetrics.
_E_ABS, _E_SQ, _E_N, _F_ABS, _F_SQ, _F_N, _V_SQ, _V_N = range(8)


class HeadMetrics(torchmetrics.Metric):
    """Errors per head: energy per atom MAE/RMSE, force component MAE/RMSE, virial per atom RMSE (eV, Å).

    Sums are accumulated in float64 and summed over processes, so a validation set split across ranks
    gives the same numbers as one process. ``compute()`` returns ``{"<head>/<metric>": value}``; metrics of
    a head without labels of that kind are left out.
    """

    full_state_update = False

    def __init__(self, head_names: list[str] | tuple[str, ...]) -> None:
        super().__init__()
        self.head_names = list(head_names)
        self.add_state("sums", default=torch.zeros(len(self.head_names), 8, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, pred: Mapping[str, Tensor], batch: Any) -> None:  # type: ignore[override]
        n_heads = len(self.head_names)
        head = batch[K.HEAD]
        natoms = atoms_per_graph(batch).double()
        rows = torch.zeros(n_heads, 8, dtype=torch.float64, device=head.device)

        def add(col: int, per_graph: Tensor) -> None:
            rows[:, col] += torch.zeros(n_heads, dtype=torch.float64, device=head.device).index_add(
                0, head, per_graph.double()
            )

        if K.ENERGY in pred:
            m = batch[K.HAS_ENERGY].double()
            err = (pred[K.ENERGY].detach().double() - batch[K.ENERGY].double()) / natoms
            add(_E_ABS, err.abs() * m)
            add(_E_SQ, err.square() * m)
            add(_E_N, m)
        fkey = K.FORCES if K.FORCES in pred else (K.DIRECT_FORCES if K.DIRECT_FORCES in pred else None)
        if fkey is not None:
            m = batch[K.HAS_FORCES].double()
            err = pred[fkey].detach().double() - batch[K.FORCES].double()
            n_graphs = natoms.shape[0]
            g = batch[K.BATCH]
            abs_g = torch.zeros(n_graphs, dtype=torch.float64, device=head.device).index_add(0, g, err.abs().sum(-1))
            sq_g = torch.zeros(n_graphs, dtype=torch.float64, device=head.device).index_add(0, g, err.square().sum(-1))
            add(_F_ABS, abs_g * m)
            add(_F_SQ, sq_g * m)
            add(_F_N, 3.0 * natoms * m)
        if K.VIRIAL in pred and K.HAS_VIRIAL in batch:
            m = batch[K.HAS_VIRIAL].double()
            if bool(m.any()):
                err = (pred[K.VIRIAL].detach().double() - batch[K.VIRIAL].double()) / natoms[:, None, None]
                add(_V_SQ, err.square().flatten(1).sum(-1) * m)
                add(_V_N, 9.0 * m)
        self.sums += rows

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        out: dict[str, Tensor] = {}
        s = self.sums
        for i, head in enumerate(self.head_names):
            if s[i, _E_N] > 0:
                out[f"{head}/energy_mae_per_atom"] = s[i, _E_ABS] / s[i, _E_N]
                out[f"{head}/energy_rmse_per_atom"] = (s[i, _E_SQ] / s[i, _E_N]).sqrt()
            if s[i, _F_N] > 0:
                out[f"{head}/force_mae"] = s[i, _F_ABS] / s[i, _F_N]
                out[f"{head}/force_rmse"] = (s[i, _F_SQ] / s[i, _F_N]).sqrt()
            if s[i, _V_N] > 0:
                out[f"{head}/virial_rmse_per_atom"] = (s[i, _V_SQ] / s[i, _V_N]).sqrt()
        return out
