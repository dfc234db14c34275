"""Multi-dataset, multi-head data for training: one LAM-H5 file per dataset, each tied to a model head.

* Sampling: every training sample first picks a dataset with probability ``sample_weight`` (default: in
  proportion to its number of training frames), then the next frame of that dataset's shuffled training split.
  Batches therefore mix heads. The stream is a pure function of ``(seed, epoch)``.
* Batching: a fixed number of frames (``batch_size``) or greedy packing up to ``max_atoms`` atoms; setting
  both (or neither) is an error.
* Distributed: the global stream of batches is dealt round-robin to the ranks, every rank gets the same
  number of batches (the remainder is dropped), so ranks see different frames and DDP never waits on a
  missing batch. Validation frames are split between ranks without duplicates (no padding), and the
  validation metrics are sums reduced over ranks.
* Neighbour lists are built in the DataLoader worker processes (``Frame → AtomicGraph`` runs in
  ``Dataset.__getitem__``).
* Resuming: the training loader is stateful (Lightning saves its ``state_dict`` in checkpoints), so a run
  resumed in the middle of an epoch continues with the batch that comes next, not a fresh epoch.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lam.data.formats.h5 import H5Reader
from lam.data.frame import Frame

__all__ = ["DatasetSpec", "FrameToGraph", "MultiHeadBatchSampler", "MultiHeadDataModule", "MultiHeadDataset",
           "split_train_val"]

log = logging.getLogger(__name__)

SAMPLE_ID = "sample_id"
"""Per-graph field added to every training/validation graph: index of the frame in the concatenated datasets."""


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of a multi-head run.

    Args:
        path: LAM-H5 file.
        head: model head it trains (default: the file's ``head`` attribute).
        sample_weight: relative sampling probability (default: proportional to its training frames).
        loss_weight: per-frame loss weight of its frames.
        name: label in logs (default: the file stem).
        manifest: optional ``datasets_manifest/*.yaml`` describing the source data (its hash is recorded).
    """

    path: str
    head: str | None = None
    sample_weight: float | None = None
    loss_weight: float = 1.0
    name: str | None = None
    manifest: str | None = None

    @classmethod
    def from_config(cls, entry: Mapping[str, Any] | DatasetSpec, index: int) -> DatasetSpec:
        if isinstance(entry, DatasetSpec):
            return entry
        if not isinstance(entry, Mapping):
            raise TypeError(f"datasets[{index}] must be a mapping with at least 'path', got {entry!r}")
        allowed = set(cls.__dataclass_fields__)
        unknown = set(entry) - allowed
        if unknown:
            raise ValueError(f"datasets[{index}] has unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        if "path" not in entry or entry["path"] in (None, ""):
            raise ValueError(f"datasets[{index}] needs a 'path' to a LAM-H5 file")
        kw = dict(entry)
        kw["path"] = str(kw["path"])
        if kw.get("sample_weight") is not None and not float(kw["sample_weight"]) > 0:
            raise ValueError(f"datasets[{index}] ({kw['path']}): sample_weight must be > 0, got {kw['sample_weight']}")
        if not float(kw.get("loss_weight", 1.0)) >= 0:
            raise ValueError(f"datasets[{index}] ({kw['path']}): loss_weight must be >= 0")
        return cls(**kw)


def split_train_val(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, val) frame indices of a dataset of ``n`` frames."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    from lam.data.splits import split_indices

    train, val = split_indices(n, [1.0 - val_fraction, val_fraction], seed)
    return np.asarray(train, dtype=np.int64), np.asarray(val, dtype=np.int64)


class FrameToGraph:
    """Picklable ``Frame → AtomicGraph`` transform (runs in DataLoader workers)."""

    def __init__(self, cutoff: float, head: int, weight: float, dtype: torch.dtype) -> None:
        self.cutoff = float(cutoff)
        self.head = int(head)
        self.weight = float(weight)
        self.dtype = dtype

    def __call__(self, frame: Frame, where: str = "") -> Any:
        from lam.data.graph import AtomicGraph

        return AtomicGraph.from_frame(frame, self.cutoff, head=self.head, weight=self.weight, dtype=self.dtype,
                                      where=where)


class MultiHeadDataset(Dataset):
    """Concatenation of LAM-H5 datasets; item ``i`` is a graph with its head index and ``sample_id = i``."""

    def __init__(self, readers: Sequence[H5Reader], transforms: Sequence[Callable[..., Any]]) -> None:
        self.readers = list(readers)
        self.transforms = list(transforms)
        self.offsets = np.concatenate([[0], np.cumsum([len(r) for r in self.readers])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(dataset number, frame index in that dataset) of a global index."""
        k = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return k, int(index - self.offsets[k])

    def __getitem__(self, index: int) -> Any:
        k, i = self.locate(int(index))
        reader = self.readers[k]
        graph = self.transforms[k](reader[i], where=f"{reader.path}: frame {i}")
        graph[SAMPLE_ID] = torch.tensor([int(index)], dtype=torch.int64)
        return graph


def _pack_by_atoms(order: np.ndarray, n_atoms: np.ndarray, max_atoms: int) -> list[np.ndarray]:
    """Greedy sequential packing of ``order`` into batches of at most ``max_atoms`` atoms."""
    batches: list[np.ndarray] = []
    start, total = 0, 0
    sizes = n_atoms[order]
    for pos, size in enumerate(sizes.tolist()):
        if total + size > max_atoms and pos > start:
            batches.append(order[start:pos])
            start, total = pos, 0
        total += size
    if start < len(order):
        batches.append(order[start:])
    return batches


class MultiHeadBatchSampler(Sampler[list[int]]):
    """Weighted multi-dataset batch sampler, deterministic in ``(seed, epoch)`` and aware of the DDP rank.

    Args:
        train_indices: per dataset, its training frame indices (local to the dataset).
        offsets: start of each dataset in the global index space (length = number of datasets + 1).
        probabilities: per dataset, probability of drawing from it.
        n_atoms: (total frames,) atoms per frame in the global index space (for ``max_atoms``).
        epoch_size: samples drawn per epoch over all ranks.
        batch_size / max_atoms: exactly one must be set.
        num_replicas / rank: the DDP world size and this rank.
        skip_batches: batches of the first epoch iterated to skip (used when resuming mid-epoch).
    """

    def __init__(self, train_indices: Sequence[np.ndarray], offsets: np.ndarray, probabilities: Sequence[float],
                 n_atoms: np.ndarray, epoch_size: int, batch_size: int | None = None, max_atoms: int | None = None,
                 num_replicas: int = 1, rank: int = 0, seed: int = 0, shuffle: bool = True) -> None:
        if (batch_size is None) == (max_atoms is None):
            raise ValueError("set exactly one of batch_size (frames per batch) and max_atoms (atoms per batch)")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.train_indices = [np.asarray(t, dtype=np.int64) for t in train_indices]
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.probabilities = np.asarray(probabilities, dtype=np.float64)
        self.n_atoms = np.asarray(n_atoms, dtype=np.int64)
        self.epoch_size = int(epoch_size)
        self.batch_size = batch_size
        self.max_atoms = max_atoms
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        self.skip_batches = 0
        self._cache: tuple[int, list[np.ndarray]] | None = None
        if max_atoms is not None:
            used = np.concatenate([t + o for t, o in zip(self.train_indices, self.offsets[:-1])])
            if used.size and self.n_atoms[used].max() > max_atoms:
                raise ValueError(f"max_atoms={max_atoms} is smaller than the largest training frame "
                                 f"({int(self.n_atoms[used].max())} atoms); raise max_atoms")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_order(self, epoch: int) -> np.ndarray:
        """All samples of ``epoch`` (global indices, before batching and rank assignment)."""
        rng = np.random.default_rng([self.seed, epoch])
        active = [k for k, t in enumerate(self.train_indices) if t.size > 0]
        p = self.probabilities[active] / self.probabilities[active].sum()
        choice = np.asarray(active)[rng.choice(len(active), size=self.epoch_size, p=p)]
        out = np.empty(self.epoch_size, dtype=np.int64)
        for k in active:
            where = np.flatnonzero(choice == k)
            pool = self.train_indices[k]
            reps = -(-where.size // pool.size) if where.size else 0
            perms = [rng.permutation(pool) if self.shuffle else pool for _ in range(reps)]
            local = np.concatenate(perms)[: where.size] if perms else pool[:0]
            out[where] = local + self.offsets[k]
        return out

    def _rank_batches(self, epoch: int) -> list[np.ndarray]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        order = self.global_order(epoch)
        if self.batch_size is not None:
            n_full = len(order) // self.batch_size
            batches = [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(n_full)]
        else:
            batches = _pack_by_atoms(order, self.n_atoms, int(self.max_atoms))
        per_rank = len(batches) // self.num_replicas
        if per_rank == 0:
            raise ValueError(f"an epoch of {self.epoch_size} samples makes {len(batches)} batch(es), fewer than "
                             f"the {self.num_replicas} ranks: lower the batch size or raise epoch_size")
        mine = batches[self.rank::self.num_replicas][:per_rank]
        self._cache = (epoch, mine)
        return mine

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches(self.epoch)
        skip, self.skip_batches = self.skip_batches, 0
        for b in batches[skip:]:
            yield b.tolist()

    def __len__(self) -> int:
        return len(self._rank_batches(self.epoch))


class _EvalSampler(Sampler[list[int]]):
    """This rank's share of the validation frames (``indices[rank::world]``, no padding) in batches."""

    def __init__(self, indices: np.ndarray, n_atoms: np.ndarray, batch_size: int | None, max_atoms: int | None,
                 num_replicas: int, rank: int) -> None:
        mine = np.asarray(indices, dtype=np.int64)[rank::num_replicas]
        if batch_size is not None:
            self.batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
        else:
            self.batches = _pack_by_atoms(mine, n_atoms, int(max_atoms))

    def __iter__(self) -> Iterator[list[int]]:
        return iter(b.tolist() for b in self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class ResumableDataLoader(DataLoader):
    """DataLoader whose position inside an epoch is saved in (and restored from) Lightning checkpoints.

    The position is derived from optimiser steps (``global_step`` now minus at the start of the epoch), which
    is exact whatever the worker prefetching; it assumes one batch per step (no gradient accumulation).
    """

    def __init__(self, *args: Any, step_fn: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._step_fn = step_fn
        self._epoch_start_step = 0
        self._pending_start: int | None = None

    def __iter__(self) -> Any:
        sampler: MultiHeadBatchSampler = self.batch_sampler  # type: ignore[assignment]
        if self._pending_start is not None:
            self._epoch_start_step = self._pending_start
            self._pending_start = None
        else:
            self._epoch_start_step = self._step_fn() - 0
            sampler.skip_batches = 0
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        sampler: MultiHeadBatchSampler = self.batch_sampler  # type: ignore[assignment]
        return {"epoch": sampler.epoch, "epoch_start_step": self._epoch_start_step, "step": self._step_fn()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler: MultiHeadBatchSampler = self.batch_sampler  # type: ignore[assignment]
        done = int(state["step"]) - int(state["epoch_start_step"])
        if 0 < done < len(sampler):
            sampler.set_epoch(int(state["epoch"]))
            sampler.skip_batches = done
            self._pending_start = int(state["epoch_start_step"])


class MultiHeadDataModule(L.LightningDataModule):
    """Training and validation data of several datasets, each tied to a head of the model.

    Args:
        datasets: entries of :class:`DatasetSpec` fields (``path`` and optionally ``head``, ``sample_weight``,
            ``loss_weight``, ``name``, ``manifest``).
        cutoff: neighbour-list cutoff (the model's ``rcut``).
        head_names: the model's heads, in index order; every dataset's head must be one of them.
        dtype: floating dtype of the graphs (the model's).
        batch_size: frames per batch; or ``max_atoms``: atoms per batch. Exactly one of them.
        val_batch_size / val_max_atoms: the same for validation (default: the training values).
        val_fraction: fraction of each dataset held out for validation (deterministic in ``seed``).
        epoch_size: training samples per epoch over all ranks (default: all training frames).
        num_workers: DataLoader worker processes (neighbour lists are built there).
        seed: seed of the split and of the sampling.
    """

    def __init__(self, datasets: Sequence[Mapping[str, Any] | DatasetSpec], cutoff: float,
                 head_names: Sequence[str], dtype: torch.dtype | str = torch.float32,
                 batch_size: int | None = 8, max_atoms: int | None = None, val_batch_size: int | None = None,
                 val_max_atoms: int | None = None, val_fraction: float = 0.1, epoch_size: int | None = None,
                 num_workers: int = 0, seed: int = 0, pin_memory: bool = False) -> None:
        super().__init__()
        if not datasets:
            raise ValueError("data.datasets is empty: list at least one LAM-H5 file")
        if (batch_size is None) == (max_atoms is None):
            raise ValueError(f"set exactly one of data.batch_size (frames) and data.max_atoms (atoms per batch); "
                             f"got batch_size={batch_size}, max_atoms={max_atoms}")
        if val_batch_size is not None and val_max_atoms is not None:
            raise ValueError("set at most one of data.val_batch_size and data.val_max_atoms")
        for name, v in (("batch_size", batch_size), ("max_atoms", max_atoms), ("val_batch_size", val_batch_size),
                        ("val_max_atoms", val_max_atoms), ("epoch_size", epoch_size)):
            if v is not None and int(v) < 1:
                raise ValueError(f"data.{name} must be >= 1, got {v}")
        self.specs = [DatasetSpec.from_config(d, i) for i, d in enumerate(datasets)]
        self.cutoff = float(cutoff)
        self.head_names = list(head_names)
        self.dtype = dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype).replace("torch.", ""))
        self.batch_size, self.max_atoms = batch_size, max_atoms
        if val_batch_size is None and val_max_atoms is None:
            val_batch_size, val_max_atoms = batch_size, max_atoms
        self.val_batch_size, self.val_max_atoms = val_batch_size, val_max_atoms
        self.val_fraction = float(val_fraction)
        self.epoch_size = epoch_size
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.pin_memory = pin_memory

        self.readers = [H5Reader(s.path) for s in self.specs]
        self.heads: list[str] = []
        for spec, reader in zip(self.specs, self.readers):
            head = spec.head if spec.head is not None else reader.attrs.get("head")
            if head is None:
                raise ValueError(f"{spec.path}: no head given in the config and no 'head' attribute in the file")
            if head not in self.head_names:
                raise ValueError(f"{spec.path}: head {head!r} is not a head of the model {self.head_names}")
            if len(reader) == 0:
                raise ValueError(f"{spec.path}: the dataset has no frames")
            self.heads.append(str(head))
        splits = [split_train_val(len(r), self.val_fraction, self.seed + k) for k, r in enumerate(self.readers)]
        self.train_indices = [s[0] for s in splits]
        self.val_indices = [s[1] for s in splits]
        transforms = [FrameToGraph(self.cutoff, self.head_names.index(h), s.loss_weight, self.dtype)
                      for s, h in zip(self.specs, self.heads)]
        self.dataset = MultiHeadDataset(self.readers, transforms)
        self.n_atoms = np.concatenate([r.n_atoms for r in self.readers]).astype(np.int64)
        sizes = np.array([t.size for t in self.train_indices], dtype=np.float64)
        if sizes.sum() == 0:
            raise ValueError("no training frames: every dataset went to validation (lower val_fraction)")
        weights = np.array([s.sample_weight if s.sample_weight is not None else np.nan for s in self.specs])
        if np.isnan(weights).all():
            weights = sizes
        elif np.isnan(weights).any():
            raise ValueError("give sample_weight for every dataset or for none (none = proportional to size)")
        weights = np.where(sizes > 0, weights, 0.0)
        self.probabilities = weights / weights.sum()

    # ------------------------------------------------------------------ description
    def names(self) -> list[str]:
        return [s.name or Path(s.path).stem for s in self.specs]

    def summary(self) -> list[dict[str, Any]]:
        """One row per dataset: name, head, path, frames (train / val), sampling probability."""
        return [{"name": n, "head": h, "path": s.path, "n_train": int(t.size), "n_val": int(v.size),
                 "probability": float(p)}
                for n, h, s, t, v, p in zip(self.names(), self.heads, self.specs, self.train_indices,
                                            self.val_indices, self.probabilities)]

    def element_references(self, type_map: Sequence[str]) -> dict[str, dict[str, float]]:
        """Least-squares element energies per head (one streaming pass over each file)."""
        from lam.data.stats import compute_statistics

        out: dict[str, dict[str, float]] = {}
        for head in dict.fromkeys(self.heads):
            readers = [r for r, h in zip(self.readers, self.heads) if h == head]
            source: Any = readers[0].path if len(readers) == 1 else itertools.chain.from_iterable(readers)
            stats = compute_statistics(source, elements=list(type_map))
            out[head] = {s: float(stats.element_energies.get(s, 0.0)) for s in type_map}
        return out

    def sample_graphs(self, n: int) -> list[Any]:
        """Up to ``n`` training graphs spread over all datasets (deterministic), e.g. for descriptor statistics."""
        pool = np.concatenate([t + o for t, o in zip(self.train_indices, self.offsets_of_datasets())])
        if pool.size > n:
            pool = np.sort(np.random.default_rng(self.seed).choice(pool, size=n, replace=False))
        return [self.dataset[int(i)] for i in pool]

    def offsets_of_datasets(self) -> np.ndarray:
        return self.dataset.offsets[:-1]

    def data_hashes(self) -> dict[str, dict[str, Any]]:
        """sha256 of every LAM-H5 file (cached by lam.data.manifest) and of its manifest, if any."""
        from lam.data.manifest import sha256_path

        out: dict[str, dict[str, Any]] = {}
        for name, spec, head in zip(self.names(), self.specs, self.heads):
            row: dict[str, Any] = {"path": spec.path, "head": head, "sha256": sha256_path(spec.path)}
            if spec.manifest:
                row["manifest"] = spec.manifest
                row["manifest_sha256"] = sha256_path(spec.manifest, use_cache=False)
            out[name] = row
        return out

    # ------------------------------------------------------------------ loaders
    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def _step(self) -> int:
        return int(self.trainer.global_step) if self.trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        from lam.data.graph import collate

        world, rank = self._world()
        n_train = int(sum(t.size for t in self.train_indices))
        sampler = MultiHeadBatchSampler(
            self.train_indices, self.dataset.offsets, self.probabilities, self.n_atoms,
            epoch_size=self.epoch_size or n_train, batch_size=self.batch_size, max_atoms=self.max_atoms,
            num_replicas=world, rank=rank, seed=self.seed)
        return ResumableDataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate,
                                   num_workers=self.num_workers, pin_memory=self.pin_memory,
                                   persistent_workers=self.num_workers > 0, step_fn=self._step)

    def val_dataloader(self) -> DataLoader:
        from lam.data.graph import collate

        world, rank = self._world()
        indices = np.concatenate([v + o for v, o in zip(self.val_indices, self.dataset.offsets[:-1])])
        sampler = _EvalSampler(indices, self.n_atoms, self.val_batch_size, self.val_max_atoms, world, rank)
        return DataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0)
