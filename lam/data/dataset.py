"""A lazy, multi-file PyTorch dataset over LAM-H5 files."""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch.utils.data

from lam.data.formats.h5 import H5Reader
from lam.data.frame import Frame

__all__ = ["H5Dataset"]


class H5Dataset(torch.utils.data.Dataset):
    """Frames of one or more LAM-H5 files, concatenated in the order given.

    Each file is checked when the dataset is built, but no HDF5 handle is kept open: every process
    (the main one and each DataLoader worker, forked or spawned) opens its own handle on first access.

    Args:
        paths: one path or a sequence of paths to LAM-H5 files.
        transform: optional callable applied to each :class:`Frame` (e.g. building a graph); its result
            is returned instead of the frame.
    """

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        transform: Callable[[Frame], Any] | None = None,
    ) -> None:
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.readers = [H5Reader(p) for p in paths]
        self.transform = transform
        self._ends = np.cumsum([len(r) for r in self.readers]).tolist()

    def __len__(self) -> int:
        return int(self._ends[-1]) if self._ends else 0

    def locate(self, index: int) -> tuple[int, int]:
        """``(file index, frame index within that file)`` of a global index."""
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} frames")
        f = bisect.bisect_right(self._ends, i)
        start = self._ends[f - 1] if f else 0
        return f, i - start

    def __getitem__(self, index: int) -> Any:
        f, k = self.locate(index)
        frame = self.readers[f][k]
        return frame if self.transform is None else self.transform(frame)

    @property
    def n_atoms(self) -> np.ndarray:
        """(len,) number of atoms per frame (from the offsets in memory; useful for size-aware batching)."""
        if not self.readers:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([r.n_atoms for r in self.readers])

    def __repr__(self) -> str:
        return f"H5Dataset({[r.path for r in self.readers]}, n_frames={len(self)})"
