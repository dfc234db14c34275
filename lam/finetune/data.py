"""Downstream data of a finetuning run: a training pool, a fixed test set and deterministic subsets.

Any format :func:`lam.data.formats.read_any` reads is accepted (LAM-H5, deepmd/npy directories, extxyz …),
one path or a list of paths per split. Without an explicit ``test`` set, ``test_fraction`` of the training
paths is held out (a seeded split, :func:`lam.data.splits.split_indices`). ``n_train`` frames are the first
``n`` of a seeded permutation of the pool, so the subsets of a learning curve are nested (the 10 frames of
``n=10`` are among the 30 of ``n=30``) and the test set never changes with ``n``.

The selected frames are written to LAM-H5 files (:func:`lam.data.formats.write_h5`) under the run's output
directory, which the training data module reads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lam.data.frame import Frame

__all__ = ["DownstreamData"]

log = logging.getLogger(__name__)

PathList = str | os.PathLike | Sequence[str | os.PathLike]


def _paths(value: PathList | None, what: str) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, (str, os.PathLike)) else list(value)
    out = [str(p) for p in items]
    if not out:
        raise ValueError(f"data.{what} is empty: give a path or a list of paths")
    for p in out:
        if not Path(p).exists():
            raise FileNotFoundError(f"data.{what}: {p} does not exist")
    return out


def _read(paths: list[str], format: str | None) -> tuple[list[Frame], list[str]]:
    from lam.data.formats import read_any

    frames: list[Frame] = []
    where: list[str] = []
    for p in paths:
        for k, frame in enumerate(read_any(p, format=format)):
            frames.append(frame)
            where.append(f"{p}: frame {k}")
    return frames, where


class DownstreamData:
    """Training pool and test set of a finetuning run (frames held in memory; downstream sets are small).

    Args:
        train: path(s) of the training data.
        test: path(s) of a fixed test set; ``None`` holds out ``test_fraction`` of ``train``.
        format: reader for every path (``None``: sniffed per path).
        test_fraction: fraction of ``train`` held out when ``test`` is ``None``.
        seed: seed of the hold-out split and of the subset order.
    """

    def __init__(self, train: PathList, test: PathList | None = None, format: str | None = None,
                 test_fraction: float = 0.2, seed: int = 0) -> None:
        from lam.data.splits import split_indices

        self.train_paths = _paths(train, "train")
        self.test_paths = _paths(test, "test")
        frames, where = _read(self.train_paths, format)
        if not frames:
            raise ValueError(f"data.train {self.train_paths}: no frames")
        if self.test_paths:
            self.test, self.test_where = _read(self.test_paths, format)
            pool = np.arange(len(frames))
        else:
            if not 0.0 < test_fraction < 1.0:
                raise ValueError(f"data.test_fraction must be in (0, 1) when data.test is not given, "
                                 f"got {test_fraction}")
            pool, held = split_indices(len(frames), [1.0 - test_fraction, test_fraction], seed)
            self.test = [frames[i] for i in held]
            self.test_where = [where[i] for i in held]
        if not self.test:
            raise ValueError(f"the test set is empty (data.test={self.test_paths or None}, "
                             f"test_fraction={test_fraction})")
        self.pool = [frames[i] for i in pool]
        self.pool_where = [where[i] for i in pool]
        self.order = np.random.default_rng([seed, 1]).permutation(len(self.pool))
        self.seed = int(seed)

    def __repr__(self) -> str:
        return (f"DownstreamData(train={self.train_paths}, test={self.test_paths or 'held out'}, "
                f"pool={len(self.pool)}, test={len(self.test)})")

    def check_elements(self, type_map: Sequence[str]) -> None:
        """Raise a clear error (file and frame) for an element outside the model's type map."""
        from ase.data import atomic_numbers, chemical_symbols

        allowed = {atomic_numbers[s] for s in type_map}
        for frames, where in ((self.pool, self.pool_where), (self.test, self.test_where)):
            for frame, w in zip(frames, where):
                bad = set(frame.numbers.tolist()) - allowed
                if bad:
                    names = sorted(chemical_symbols[z] for z in bad)
                    raise ValueError(f"{w}: element(s) {names} are not in the pretrained model's type map "
                                     f"{list(type_map)}")

    def subset_indices(self, n: int | None) -> np.ndarray:
        """Pool indices of the first ``n`` frames of the seeded order (all frames for ``None``), sorted."""
        if n is None:
            return np.arange(len(self.pool))
        if not 1 <= int(n) <= len(self.pool):
            raise ValueError(f"n_train={n} frames requested but the training pool has {len(self.pool)} "
                             f"(data.train {self.train_paths})")
        return np.sort(self.order[: int(n)])

    def subset(self, n: int | None) -> list[Frame]:
        """The training frames of a run with ``n`` frames (nested in ``n``)."""
        return [self.pool[i] for i in self.subset_indices(n)]

    def write(self, directory: str | os.PathLike, n: int | None, head: str) -> tuple[Path, Path]:
        """Write ``train_<n>.h5`` and ``test.h5`` (LAM-H5, labels for head ``head``); returns both paths."""
        from lam.data.formats import write_h5

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        train_path = out / f"train_{'all' if n is None else int(n)}.h5"
        test_path = out / "test.h5"
        source = ", ".join(self.train_paths)
        write_h5(train_path, self.subset(n), head=head, source=f"finetune subset of {source}", validate=False)
        write_h5(test_path, self.test, head=head, source=f"finetune test set of "
                 f"{', '.join(self.test_paths) or source}", validate=False)
        return train_path, test_path
