"""On-disk state of the concurrent-learning loop: an iteration record and content-hashed task results.

Everything the loop computes is a *task* whose result is stored under the SHA-256 of its inputs. A killed loop
restarted with the same command recomputes nothing that finished: it finds each finished task by its hash.
Files are written to a temporary name and renamed, so a kill never leaves a half-written result behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lam.data.frame import Frame


def content_hash(payload: Any) -> str:
    """SHA-256 of a JSON-serialisable payload (numpy arrays are hashed by dtype, shape and bytes)."""

    def default(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            arr = np.ascontiguousarray(obj)
            return {"__ndarray__": hashlib.sha256(arr.tobytes()).hexdigest(), "dtype": str(arr.dtype),
                    "shape": list(arr.shape)}
        if isinstance(obj, (np.integer, np.floating, np.bool_)):
            return obj.item()
        if isinstance(obj, Path):
            return str(obj)
        raise TypeError(f"cannot hash object of type {type(obj).__name__}")

    text = json.dumps(payload, sort_keys=True, default=default, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def frames_to_arrays(frames: Sequence[Frame]) -> dict[str, np.ndarray]:
    """Pack frames into flat arrays (ragged by ``offsets``); missing labels are NaN with a mask."""
    n = [f.n_atoms for f in frames]
    offsets = np.concatenate([[0], np.cumsum(n)]).astype(np.int64)
    total = int(offsets[-1])
    forces = np.zeros((total, 3))
    for f, a, b in zip(frames, offsets[:-1], offsets[1:]):
        if f.forces is not None:
            forces[a:b] = f.forces
    return {
        "offsets": offsets,
        "numbers": np.concatenate([f.numbers for f in frames]) if frames else np.zeros(0, np.int64),
        "positions": np.concatenate([f.positions for f in frames]) if frames else np.zeros((0, 3)),
        "cell": np.stack([f.cell for f in frames]) if frames else np.zeros((0, 3, 3)),
        "pbc": np.stack([f.pbc for f in frames]) if frames else np.zeros((0, 3), bool),
        "energy": np.array([np.nan if f.energy is None else f.energy for f in frames], dtype=np.float64),
        "has_forces": np.array([f.forces is not None for f in frames], dtype=bool),
        "forces": forces,
        "has_virial": np.array([f.virial is not None for f in frames], dtype=bool),
        "virial": np.stack([f.virial if f.virial is not None else np.zeros((3, 3)) for f in frames])
        if frames else np.zeros((0, 3, 3)),
    }


def arrays_to_frames(arrays: dict[str, np.ndarray]) -> list[Frame]:
    frames = []
    off = arrays["offsets"]
    for k in range(len(off) - 1):
        a, b = int(off[k]), int(off[k + 1])
        energy = float(arrays["energy"][k])
        frames.append(Frame(
            numbers=arrays["numbers"][a:b], positions=arrays["positions"][a:b], cell=arrays["cell"][k],
            pbc=arrays["pbc"][k], energy=None if np.isnan(energy) else energy,
            forces=arrays["forces"][a:b] if arrays["has_forces"][k] else None,
            virial=arrays["virial"][k] if arrays["has_virial"][k] else None,
        ))
    return frames


def save_frames(path: Path, frames: Sequence[Frame], **extra: np.ndarray) -> None:
    """Write frames (plus extra per-frame arrays) to an ``.npz`` atomically; read back without pickle."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **frames_to_arrays(frames), **{f"extra_{k}": np.asarray(v) for k, v in extra.items()})
    atomic_write_bytes(path, buf.getvalue())


def load_frames(path: Path) -> tuple[list[Frame], dict[str, np.ndarray]]:
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    extra = {k[len("extra_"):]: v for k, v in arrays.items() if k.startswith("extra_")}
    return arrays_to_frames(arrays), extra


class TaskStore:
    """Content-addressed results: ``root/<kind>/<sha256>.npz`` (frames) or ``.json`` (records)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, kind: str, key: str, suffix: str) -> Path:
        return self.root / kind / f"{key}{suffix}"

    def has_frames(self, kind: str, key: str) -> bool:
        return self.path(kind, key, ".npz").exists()

    def save_frames(self, kind: str, key: str, frames: Sequence[Frame], **extra: np.ndarray) -> Path:
        path = self.path(kind, key, ".npz")
        save_frames(path, frames, **extra)
        return path

    def load_frames(self, kind: str, key: str) -> tuple[list[Frame], dict[str, np.ndarray]]:
        return load_frames(self.path(kind, key, ".npz"))

    def has_json(self, kind: str, key: str) -> bool:
        return self.path(kind, key, ".json").exists()

    def save_json(self, kind: str, key: str, obj: Any) -> Path:
        path = self.path(kind, key, ".json")
        atomic_write_json(path, obj)
        return path

    def load_json(self, kind: str, key: str) -> Any:
        return json.loads(self.path(kind, key, ".json").read_text())


@dataclass
class IterationRecord:
    """What one iteration of explore → select → label → train produced."""

    iteration: int
    stage: str = "started"  # started | explored | selected | labelled | trained
    n_explored: int = 0
    n_accurate: int = 0
    n_candidate: int = 0
    n_failed: int = 0
    n_selected: int = 0
    n_labelled: int = 0
    n_label_failures: int = 0
    n_train_frames: int = 0
    student_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def accurate_ratio(self) -> float:
        return self.n_accurate / self.n_explored if self.n_explored else 0.0

    @property
    def candidate_ratio(self) -> float:
        return self.n_candidate / self.n_explored if self.n_explored else 0.0

    @property
    def failed_ratio(self) -> float:
        return self.n_failed / self.n_explored if self.n_explored else 0.0


class LoopState:
    """``state.json`` under the loop's work dir: the config hash and one record per iteration."""

    def __init__(self, workdir: str | Path, config_hash: str) -> None:
        self.workdir = Path(workdir)
        self.file = self.workdir / "state.json"
        self.config_hash = config_hash
        self.records: list[IterationRecord] = []
        self.converged = False
        if self.file.exists():
            data = json.loads(self.file.read_text())
            if data.get("config_hash") != config_hash:
                raise ValueError(
                    f"{self.file}: this work dir belongs to a loop with another configuration "
                    f"(hash {data.get('config_hash', '?')[:12]} != {config_hash[:12]}); use a new output dir "
                    "or the same configuration to resume"
                )
            self.records = [IterationRecord(**r) for r in data["records"]]
            self.converged = bool(data.get("converged", False))

    def record(self, iteration: int) -> IterationRecord:
        while len(self.records) <= iteration:
            self.records.append(IterationRecord(iteration=len(self.records)))
        return self.records[iteration]

    def save(self) -> None:
        atomic_write_json(self.file, {
            "config_hash": self.config_hash,
            "converged": self.converged,
            "records": [asdict(r) for r in self.records],
        })
