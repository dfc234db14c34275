"""Frame selection by model deviation (DP-GEN style trust levels)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def max_force_deviation(forces: np.ndarray) -> float:
    """ε_F: the maximum over atoms of the committee standard deviation of the force vector.

    ``forces`` has shape (n_models, n_atoms, 3); the deviation of atom i is
    ``sqrt(mean_k |F_k,i − mean_k F_k,i|²)``.
    """
    forces = np.asarray(forces, dtype=np.float64)
    if forces.ndim != 3 or forces.shape[0] < 2 or forces.shape[2] != 3:
        raise ValueError(f"committee forces must be (n_models >= 2, n_atoms, 3), got {forces.shape}")
    mean = forces.mean(axis=0, keepdims=True)
    per_atom = np.sqrt(((forces - mean) ** 2).sum(axis=-1).mean(axis=0))
    return float(per_atom.max()) if per_atom.size else 0.0


@dataclass
class Selection:
    accurate: np.ndarray  # indices with ε < lo
    candidate: np.ndarray  # lo <= ε < hi, before the cap
    failed: np.ndarray  # ε >= hi
    selected: np.ndarray  # candidates kept for labelling after the cap

    def ratios(self) -> dict[str, float]:
        n = len(self.accurate) + len(self.candidate) + len(self.failed)
        n = max(n, 1)
        return {"accurate": len(self.accurate) / n, "candidate": len(self.candidate) / n,
                "failed": len(self.failed) / n}


def select_by_deviation(deviation: np.ndarray, lo: float = 0.05, hi: float = 0.15, max_candidates: int | None = None,
                        strategy: str = "largest", seed: int = 0) -> Selection:
    """Split frames by trust levels and cap the candidates.

    ``strategy='largest'`` keeps the candidates with the largest deviation first; ``'random'`` draws them with
    ``seed``. Ties and order are deterministic, so a resumed loop selects the same frames.
    """
    dev = np.asarray(deviation, dtype=np.float64)
    if not 0 <= lo < hi:
        raise ValueError(f"trust levels must satisfy 0 <= lo < hi, got lo={lo}, hi={hi}")
    if not np.all(np.isfinite(dev)):
        # A non-finite deviation means an exploded trajectory: count it as failed, never as accurate.
        dev = np.where(np.isfinite(dev), dev, np.inf)
    idx = np.arange(dev.size)
    accurate = idx[dev < lo]
    candidate = idx[(dev >= lo) & (dev < hi)]
    failed = idx[dev >= hi]
    selected = candidate
    if max_candidates is not None and candidate.size > max_candidates:
        if strategy == "largest":
            order = np.argsort(-dev[candidate], kind="stable")
            selected = np.sort(candidate[order[:max_candidates]])
        elif strategy == "random":
            rng = np.random.default_rng(seed)
            selected = np.sort(rng.choice(candidate, size=max_candidates, replace=False))
        else:
            raise ValueError(f"unknown selection strategy {strategy!r}; use 'largest' or 'random'")
    return Selection(accurate=accurate, candidate=candidate, failed=failed, selected=selected)
