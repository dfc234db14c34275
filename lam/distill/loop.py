"""The concurrent-learning loop that distills a teacher into a compact student.

Each iteration: **explore** (MD driven by the current student; by the teacher in iteration 0) → **select**
(model deviation with trust levels) → **label** (the teacher, batched, or a reference code behind an ASE
calculator) → **train** (the student, warm-started, on everything labelled so far). Every step is an executor
task whose result is stored under the hash of its inputs (:mod:`lam.distill.state`), so a killed loop rerun
with the same command recomputes nothing that had finished and ends with the same dataset.

Deviation: with ``select.committee = "teacher"`` the deviation of a frame is the student's actual force error
against the teacher, ``max_i |F_teacher,i − F_student,i|`` (and the teacher's forces on selected frames are
reused as their labels when the teacher labels); with ``"students"`` it is the committee standard deviation
of ``select.n_committee`` students trained with different seeds (DP-GEN's ε_F), which needs no teacher call.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from lam.data.frame import Frame
from lam.distill.executors import make_executor
from lam.distill.explore import ExploreTask, run_explore
from lam.distill.label import CalculatorSpec, check_success, label_chunk
from lam.distill.select import max_force_deviation, select_by_deviation
from lam.distill.state import LoopState, TaskStore, atomic_write_json, content_hash, load_frames, save_frames

log = logging.getLogger(__name__)

__all__ = ["DistillLoop", "run_distill"]


@dataclass
class TeacherConfig:
    source: str = "outputs/demo/pretrain/export"  # path | URL#sha256=… | registry name
    head: str | None = None


@dataclass
class StudentConfig:
    preset: str = "student"
    dtype: str = "float32"
    overrides: dict[str, Any] = field(default_factory=dict)  # lam.build_model keyword overrides


@dataclass
class StructuresConfig:
    paths: list[str] = field(default_factory=list)  # anything lam.data reads
    per_file: int = 4  # starting structures taken from each file
    unique_formula: bool = True  # one structure per chemical formula


@dataclass
class ExploreConfig:
    ensembles: list[str] = field(default_factory=lambda: ["nvt"])
    temperatures: list[float] = field(default_factory=lambda: [300.0])
    steps: int = 200
    timestep_fs: float = 0.5
    sample_every: int = 10
    friction: float = 0.02
    runs_per_structure: int = 1


@dataclass
class SelectConfig:
    lo: float = 0.05
    hi: float = 0.15
    max_candidates: int | None = 100
    strategy: str = "largest"  # largest | random
    committee: str = "teacher"  # teacher | students
    n_committee: int = 2


@dataclass
class LabelConfig:
    kind: str = "teacher"  # teacher | reference
    calculator: dict[str, Any] | None = None  # {target: dotted.path, kwargs: {...}} for kind=reference
    chunk_size: int = 16
    min_success: float = 0.8
    max_retries: int = 2
    batch_size: int = 32


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 8
    lr: float = 2.0e-3
    stop_lr_ratio: float = 0.05
    energy_pref: tuple[float, float] = (1.0, 1.0)
    force_pref: tuple[float, float] = (100.0, 10.0)
    val_fraction: float = 0.1
    ema_decay: float | None = 0.99
    warm_start: bool = True
    accelerator: str = "auto"
    holdout_fraction: float = 0.2  # of iteration 0's labelled frames, kept out of training for the report


@dataclass
class ConvergeConfig:
    accurate_ratio: float = 0.9
    max_iterations: int = 5
    error_on_max: bool = False


@dataclass
class ExecutorConfig:
    kind: str = "local"  # inline | local | submitit | dask
    max_workers: int | None = 2
    folder: str | None = None  # submitit job folder (default: <output_dir>/jobs)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReportConfig:
    reference_data: list[str] = field(default_factory=list)  # files with real reference labels
    reference_frames: int = 64
    speed_frames: int = 64
    speed_repeats: int = 5


def _section(cls: type, value: Any, name: str) -> Any:
    if isinstance(value, cls):
        return value
    value = dict(value or {})
    allowed = {f.name for f in fields(cls)}
    unknown = set(value) - allowed
    if unknown:
        raise ValueError(f"distill.{name}: unknown option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return cls(**value)


def _model_hash(model_dir: Path) -> str:
    from lam.data.manifest import sha256_file

    return sha256_file(model_dir / "model.safetensors")


def _read_structures(cfg: StructuresConfig) -> list[Frame]:
    from lam.data.formats import read_any

    if not cfg.paths:
        raise ValueError("distill.structures.paths is empty: give at least one file with starting structures")
    out: list[Frame] = []
    for path in cfg.paths:
        seen: set[tuple[int, ...]] = set()
        taken = 0
        for frame in read_any(path):
            key = tuple(np.bincount(frame.numbers, minlength=119).tolist())
            if cfg.unique_formula and key in seen:
                continue
            seen.add(key)
            out.append(Frame(numbers=frame.numbers, positions=frame.positions, cell=frame.cell, pbc=frame.pbc))
            taken += 1
            if taken >= cfg.per_file:
                break
    return out


class DistillLoop:
    """Explore → select → label → train until the student is accurate where its MD goes."""

    def __init__(self, teacher: Mapping[str, Any] | TeacherConfig, structures: Mapping[str, Any],
                 output_dir: str, student: Mapping[str, Any] | None = None, explore: Mapping[str, Any] | None = None,
                 select: Mapping[str, Any] | None = None, label: Mapping[str, Any] | None = None,
                 train: Mapping[str, Any] | None = None, converge: Mapping[str, Any] | None = None,
                 executor: Mapping[str, Any] | None = None, report: Mapping[str, Any] | None = None,
                 seed: int = 0) -> None:
        self.teacher = _section(TeacherConfig, teacher, "teacher")
        self.student = _section(StudentConfig, student, "student")
        self.structures = _section(StructuresConfig, structures, "structures")
        self.explore = _section(ExploreConfig, explore, "explore")
        self.select = _section(SelectConfig, select, "select")
        self.label = _section(LabelConfig, label, "label")
        self.train = _section(TrainConfig, train, "train")
        self.converge = _section(ConvergeConfig, converge, "converge")
        self.executor_cfg = _section(ExecutorConfig, executor, "executor")
        self.report = _section(ReportConfig, report, "report")
        self.seed = int(seed)
        self.output_dir = Path(output_dir).resolve()
        self._check()

    # ------------------------------------------------------------------ set-up
    def _check(self) -> None:
        if self.label.kind not in ("teacher", "reference"):
            raise ValueError(f"distill.label.kind must be 'teacher' or 'reference', got {self.label.kind!r}")
        if self.label.kind == "reference" and not self.label.calculator:
            raise ValueError("distill.label.kind=reference needs distill.label.calculator: {target: ..., kwargs: ...}")
        if self.label.kind == "teacher" and self.label.calculator:
            raise ValueError("distill.label.calculator is set but label.kind=teacher: set kind=reference to use it")
        if self.select.committee not in ("teacher", "students"):
            raise ValueError(f"distill.select.committee must be 'teacher' or 'students', got {self.select.committee!r}")
        if self.select.committee == "students" and self.select.n_committee < 2:
            raise ValueError("distill.select.committee=students needs n_committee >= 2")
        if not 0 < self.label.min_success <= 1:
            raise ValueError(f"distill.label.min_success must be in (0, 1], got {self.label.min_success}")
        if self.converge.max_iterations < 2:
            raise ValueError("distill.converge.max_iterations must be >= 2 (iteration 0 only bootstraps the student)")

    def config_dict(self) -> dict[str, Any]:
        sections = ("teacher", "student", "structures", "explore", "select", "label", "train", "converge",
                    "report")
        d = {name: asdict(getattr(self, name)) for name in sections}
        d["seed"] = self.seed
        return d

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        from lam.hub import resolve_source

        self.output_dir.mkdir(parents=True, exist_ok=True)
        teacher_dir = Path(resolve_source(self.teacher.source))
        teacher_meta = json.loads((teacher_dir / "metadata.json").read_text())
        heads = list(teacher_meta.get("heads") or teacher_meta["model"]["heads"])
        head = self.teacher.head or (heads[0] if len(heads) == 1 else None)
        if head is None or head not in heads:
            raise ValueError(f"distill.teacher.head must be one of the teacher's heads {heads}, "
                             f"got {self.teacher.head!r}")
        self.head = head
        self.type_map = list(teacher_meta.get("type_map") or teacher_meta["model"]["type_map"])
        self.teacher_dir = teacher_dir
        self.teacher_hash = _model_hash(teacher_dir)
        # The config hash covers everything that changes results, but not the executor (results are equal).
        state = LoopState(self.output_dir, content_hash({**self.config_dict(), "teacher_hash": self.teacher_hash}))
        store = TaskStore(self.output_dir / "tasks")
        self.store, self.state = store, state
        self.tasks_log = self.output_dir / "tasks.log"
        starts = _read_structures(self.structures)
        folder = self.executor_cfg.folder or str(self.output_dir / "jobs")
        executor = make_executor(self.executor_cfg.kind, max_workers=self.executor_cfg.max_workers, folder=folder,
                                 **dict(self.executor_cfg.options))
        try:
            for it in range(self.converge.max_iterations):
                if state.converged:
                    break
                rec = state.record(it)
                if rec.stage == "trained":
                    continue
                explorer = teacher_dir if it == 0 else self._student_dirs(it - 1)[0]
                frames = self._explore(executor, it, explorer, starts)
                rec.n_explored = len(frames)
                deviation, teacher_pred = self._deviation(executor, it, frames)
                if it == 0:
                    # no student yet: every explored frame is a candidate (capped at random, seeded)
                    sel = select_by_deviation(np.full(len(frames), 0.5 * (self.select.lo + self.select.hi)),
                                              self.select.lo, self.select.hi, self.select.max_candidates,
                                              "random", seed=self.seed)
                else:
                    sel = select_by_deviation(deviation, self.select.lo, self.select.hi, self.select.max_candidates,
                                              self.select.strategy, seed=self.seed + it)
                rec.n_accurate, rec.n_candidate, rec.n_failed = len(sel.accurate), len(sel.candidate), len(sel.failed)
                rec.n_selected = len(sel.selected)
                rec.stage = "selected"
                state.save()
                log.info("iteration %d: explored %d, accurate %.2f candidate %.2f failed %.2f", it, len(frames),
                         rec.accurate_ratio, rec.candidate_ratio, rec.failed_ratio)
                if it > 0 and rec.accurate_ratio >= self.converge.accurate_ratio:
                    state.converged = True
                    rec.stage = "trained"  # nothing left to do in this iteration
                    rec.student_dir = str(self._student_dirs(it - 1)[0])
                    state.save()
                    break
                labelled = self._label(executor, it, [frames[i] for i in sel.selected],
                                       None if teacher_pred is None else [teacher_pred[i] for i in sel.selected])
                rec.n_labelled = len(labelled)
                rec.n_label_failures = len(sel.selected) - len(labelled)
                rec.stage = "labelled"
                state.save()
                train_frames = self._dataset(it)
                rec.n_train_frames = len(train_frames)
                student_dirs = self._train(it, train_frames)
                rec.student_dir = str(student_dirs[0])
                rec.stage = "trained"
                state.save()
            else:
                msg = (f"distillation did not converge in {self.converge.max_iterations} iterations (accurate ratio "
                       f"{state.records[-1].accurate_ratio:.2f} < {self.converge.accurate_ratio})")
                if self.converge.error_on_max:
                    raise RuntimeError(msg + "; raise converge.max_iterations or set converge.error_on_max=false")
                log.warning(msg)
        finally:
            executor.shutdown()
        return self._finish()

    # ------------------------------------------------------------------ stages
    def _log_task(self, kind: str, key: str, n: int) -> None:
        with open(self.tasks_log, "a") as fh:
            fh.write(f"{kind} {key} {n}\n")

    def _run_tasks(self, executor: cf.Executor, kind: str, jobs: list[tuple[str, Any, tuple, dict]]) -> None:
        """Submit the jobs whose results are not stored yet; store each result as soon as it is done."""
        pending = {}
        for key, fn, args, kwargs in jobs:
            if not self.store.has_frames(kind, key):
                pending[executor.submit(fn, *args, **kwargs)] = key
        for future in cf.as_completed(pending):
            key = pending[future]
            result = future.result()
            if kind == "label":
                labelled, errors = result
                ok = np.array([f is not None for f in labelled], dtype=bool)
                frames = [f for f in labelled if f is not None]
                self.store.save_frames(kind, key, frames, ok=ok, errors=np.array(errors, dtype=str))
                self._log_task(kind, key, int(ok.sum()))
            else:
                self.store.save_frames(kind, key, result)
                self._log_task(kind, key, len(result))

    def _explore(self, executor: cf.Executor, it: int, model_dir: Path, starts: Sequence[Frame]) -> list[Frame]:
        e = self.explore
        model_hash = _model_hash(model_dir)
        jobs, keys = [], []
        n = 0
        for s, start in enumerate(starts):
            for ensemble in e.ensembles:
                for temperature in e.temperatures:
                    for r in range(e.runs_per_structure):
                        task = ExploreTask(model_dir=str(model_dir), head=self.head if it == 0 else None,
                                           structure=start, ensemble=ensemble, temperature=float(temperature),
                                           steps=e.steps, timestep_fs=e.timestep_fs, sample_every=e.sample_every,
                                           friction=e.friction, seed=self.seed + 1000 * it + n)
                        n += 1
                        ident = {**task.identity(), "model_dir": None, "model_hash": model_hash, "structure_id": s,
                                 "run": r}
                        key = content_hash({"kind": "explore", **ident})
                        traj = str(self.output_dir / f"iter_{it:03d}" / "trajectories" / f"{key[:16]}.traj")
                        jobs.append((key, run_explore, (task,), {"trajectory": traj}))
                        keys.append(key)
        self._run_tasks(executor, "explore", jobs)
        return [f for key in keys for f in self.store.load_frames("explore", key)[0]]

    def _deviation(self, executor: cf.Executor, it: int, frames: list[Frame]) -> tuple[np.ndarray, list[Frame] | None]:
        """Per-frame deviation and, with the teacher committee, the teacher's predictions (reused as labels)."""
        n = len(frames)
        if it == 0 or n == 0:
            if self.label.kind == "teacher" and n:
                return np.zeros(n), self._predict_all(executor, "teacher", self.teacher_dir, frames)
            return np.zeros(n), None
        students = self._student_dirs(it - 1)
        if self.select.committee == "teacher":
            teacher_pred = self._predict_all(executor, "teacher", self.teacher_dir, frames)
            student_pred = self._predict_all(executor, "student", students[0], frames)
            dev = np.array([np.linalg.norm(t.forces - s.forces, axis=1).max() if t.n_atoms else 0.0
                            for t, s in zip(teacher_pred, student_pred)])
            return dev, teacher_pred
        preds = [self._predict_all(executor, f"committee{k}", d, frames) for k, d in enumerate(students)]
        dev = np.array([max_force_deviation(np.stack([p[i].forces for p in preds])) for i in range(n)])
        return dev, None

    def _predict_all(self, executor: cf.Executor, name: str, model_dir: Path, frames: list[Frame]) -> list[Frame]:
        from lam.distill.evaluate import predict_task

        model_hash = _model_hash(model_dir)
        chunk = max(1, self.label.chunk_size)
        jobs, keys = [], []
        for start in range(0, len(frames), chunk):
            part = frames[start:start + chunk]
            key = content_hash({"kind": "predict", "model": model_hash, "head": self.head,
                                "positions": [f.positions for f in part], "numbers": [f.numbers for f in part],
                                "cells": [f.cell for f in part]})
            jobs.append((key, predict_task, (str(model_dir), self.head, part),
                         {"batch_size": self.label.batch_size, "compute_virial": True}))
            keys.append(key)
        self._run_tasks(executor, "predict", jobs)
        return [f for key in keys for f in self.store.load_frames("predict", key)[0]]

    def _label(self, executor: cf.Executor, it: int, frames: list[Frame],
               teacher_pred: list[Frame] | None) -> list[Frame]:
        it_dir = self.output_dir / f"iter_{it:03d}"
        out_file = it_dir / "labelled.npz"
        if out_file.exists():
            return load_frames(out_file)[0]
        errors: list[str] = []
        if self.label.kind == "teacher":
            labelled = teacher_pred if teacher_pred is not None else self._predict_all(
                executor, "teacher", self.teacher_dir, frames)
        else:
            spec = CalculatorSpec(self.label.calculator["target"], dict(self.label.calculator.get("kwargs") or {}))
            chunk = max(1, self.label.chunk_size)
            jobs, keys = [], []
            for start in range(0, len(frames), chunk):
                part = frames[start:start + chunk]
                key = content_hash({"kind": "label", "calc": spec.identity(),
                                    "positions": [f.positions for f in part], "numbers": [f.numbers for f in part],
                                    "cells": [f.cell for f in part], "pbc": [f.pbc for f in part]})
                jobs.append((key, label_chunk, (part, spec), {"max_retries": self.label.max_retries}))
                keys.append(key)
            self._run_tasks(executor, "label", jobs)
            labelled = []
            for key in keys:
                got, extra = self.store.load_frames("label", key)
                labelled.extend(got)
                errors.extend(str(e) for e in extra["errors"])
            check_success(len(labelled), len(frames), self.label.min_success, it, errors)
        save_frames(out_file, labelled)
        return labelled

    def _dataset(self, it: int) -> list[Frame]:
        """Everything labelled up to iteration ``it``, minus the hold-out part of iteration 0."""
        frames: list[Frame] = []
        for k in range(it + 1):
            labelled = load_frames(self.output_dir / f"iter_{k:03d}" / "labelled.npz")[0]
            if k == 0:
                train_idx, _ = self._holdout_split(len(labelled))
                labelled = [labelled[i] for i in train_idx]
            frames.extend(labelled)
        return frames

    def _holdout_split(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(n)
        n_hold = int(round(self.train.holdout_fraction * n)) if n > 4 else 0
        return np.sort(order[n_hold:]), np.sort(order[:n_hold])

    def _student_dirs(self, it: int) -> list[Path]:
        n = self.select.n_committee if self.select.committee == "students" else 1
        return [self.output_dir / f"iter_{it:03d}" / f"student{k}" / "export" for k in range(n)]

    def _train(self, it: int, frames: list[Frame]) -> list[Path]:
        from lam.data.formats.h5 import write_h5

        it_dir = self.output_dir / f"iter_{it:03d}"
        data = it_dir / "train.h5"
        if not data.exists():
            write_h5(data, frames, functional=f"teacher:{self.head}", head=self.head, source="lam.distill",
                     on_close="warn")
        out = []
        for k, export in enumerate(self._student_dirs(it)):
            done = export.parent / "DONE"
            if not done.exists():
                # a killed training restarts from the start of this iteration: the result stays bit-identical
                shutil.rmtree(export.parent, ignore_errors=True)
                init = self._student_dirs(it - 1)[k] if it > 0 and self.train.warm_start else None
                self._train_one(data, export.parent, init, seed=self.seed + 7919 * k + it)
                done.write_text("ok\n")
            out.append(export)
        return out

    def _train_one(self, data: Path, run_dir: Path, init: Path | None, seed: int) -> None:
        from omegaconf import OmegaConf

        from lam.train.job import run_pretraining

        t = self.train
        if init is not None:
            model = {"_target_": "lam.checkpoint.load", "path": str(init)}
        else:
            model = {"_target_": "lam.build_model", "preset": self.student.preset, "type_map": self.type_map,
                     "heads": [self.head], "dtype": self.student.dtype, "seed": seed, **self.student.overrides}
        cfg = OmegaConf.create({
            "seed": seed, "output_dir": str(run_dir), "resume": "never", "validate_before_training": False,
            "record_frames": False, "max_nonfinite_steps": 10,
            "descriptor_statistics_frames": 256 if init is None else 0,
            "model": model,
            "data": {"_target_": "lam.train.datamodule.MultiHeadDataModule",
                     "datasets": [{"path": str(data), "head": self.head}], "batch_size": t.batch_size,
                     "val_fraction": t.val_fraction, "num_workers": 0, "seed": seed},
            "trainer": {"_target_": "lightning.pytorch.Trainer", "accelerator": t.accelerator, "devices": 1,
                        "max_steps": t.steps, "max_epochs": -1, "val_check_interval": None,
                        "check_val_every_n_epoch": None, "num_sanity_val_steps": 0, "enable_progress_bar": False,
                        "enable_model_summary": False, "log_every_n_steps": 50, "inference_mode": False,
                        "use_distributed_sampler": False, "precision": "32-true" if self.student.dtype == "float32"
                        else "64-true"},
            "loss": {"_target_": "lam.train.loss.PotentialLoss",
                     "energy": {"start_pref": t.energy_pref[0], "limit_pref": t.energy_pref[1], "kind": "mse"},
                     "forces": {"start_pref": t.force_pref[0], "limit_pref": t.force_pref[1], "kind": "mse"},
                     "virial": None, "direct_forces": None},
            "logger": {"csv": {"_target_": "lightning.pytorch.loggers.CSVLogger", "save_dir": str(run_dir / "logs"),
                               "name": "csv", "version": ""}},
            "optim": {"name": "adamw", "lr": t.lr, "weight_decay": 0.0, "betas": [0.9, 0.999]},
            "scheduler": {"kind": "exponential", "warmup_steps": 0, "stop_lr_ratio": t.stop_lr_ratio,
                          "decay_steps": max(1, t.steps // 20)},
            "ema": {"decay": t.ema_decay, "warmup": True},
            "checkpoint": {"every_n_steps": max(1, t.steps), "keep_all": False},
        })
        run_pretraining(cfg)

    # ------------------------------------------------------------------ report
    def _finish(self) -> dict[str, Any]:
        import torch

        from lam.checkpoint import load
        from lam.distill.evaluate import (
            energy_rmse_per_atom,
            force_rmse,
            predict,
            time_energy_forces,
            time_model_only,
        )

        trained = [r for r in self.state.records if r.student_dir]
        if not trained:
            raise RuntimeError("distillation produced no student (no iteration finished training)")
        final_dir = Path(trained[-1].student_dir)
        student_out = self.output_dir / "student"
        if student_out.exists():
            shutil.rmtree(student_out)
        shutil.copytree(final_dir, student_out)
        teacher, student = load(self.teacher_dir), load(student_out)

        labelled0 = load_frames(self.output_dir / "iter_000" / "labelled.npz")[0]
        _, hold_idx = self._holdout_split(len(labelled0))
        holdout = [labelled0[i] for i in hold_idx]
        if self.label.kind != "teacher":  # the hold-out must be teacher-labelled
            holdout = predict(teacher, holdout, self.head) if holdout else []
        report: dict[str, Any] = {
            "head": self.head, "teacher": str(self.teacher_dir), "student": str(student_out),
            "converged": self.state.converged,
            "iterations": [{"iteration": r.iteration, "explored": r.n_explored, "accurate": r.accurate_ratio,
                            "candidate": r.candidate_ratio, "failed": r.failed_ratio, "selected": r.n_selected,
                            "labelled": r.n_labelled, "label_failures": r.n_label_failures,
                            "train_frames": r.n_train_frames} for r in self.state.records],
        }
        if holdout:
            pred = predict(student, holdout, self.head)
            per_frame = [force_rmse([h], [q]) for h, q in zip(holdout, pred)]
            report["holdout"] = {"frames": len(holdout), "student_vs_teacher_force_rmse": force_rmse(holdout, pred),
                                 "median_frame_force_rmse": float(np.nanmedian(per_frame)),
                                 "student_vs_teacher_energy_rmse_per_atom": energy_rmse_per_atom(holdout, pred)}
        ref_frames = self._reference_frames(student)
        if ref_frames:
            pt, ps = predict(teacher, ref_frames, self.head), predict(student, ref_frames, self.head)
            report["reference"] = {"frames": len(ref_frames), "teacher_force_rmse": force_rmse(ref_frames, pt),
                                   "student_force_rmse": force_rmse(ref_frames, ps),
                                   "teacher_energy_rmse_per_atom": energy_rmse_per_atom(ref_frames, pt),
                                   "student_energy_rmse_per_atom": energy_rmse_per_atom(ref_frames, ps)}
        speed_frames = self._speed_frames()
        # timed as MD runs them: lam.LAMCalculator tabulates the student's embedding (Potential.compress)
        teacher.compress()
        student.compress()
        t_teacher = time_energy_forces(teacher, speed_frames, self.head, repeats=self.report.speed_repeats)
        t_student = time_energy_forces(student, speed_frames, self.head, repeats=self.report.speed_repeats)
        m_teacher = time_model_only(teacher, speed_frames, self.head, repeats=self.report.speed_repeats)
        m_student = time_model_only(student, speed_frames, self.head, repeats=self.report.speed_repeats)
        report["speed"] = {"frames": len(speed_frames), "atoms": int(sum(f.n_atoms for f in speed_frames)),
                           "teacher_ms": 1000 * t_teacher, "student_ms": 1000 * t_student,
                           "speedup": t_teacher / t_student,
                           "teacher_model_ms": 1000 * m_teacher, "student_model_ms": 1000 * m_student,
                           "model_speedup": m_teacher / m_student, "threads": torch.get_num_threads()}
        atomic_write_json(self.output_dir / "report.json", report)
        (self.output_dir / "report.md").write_text(format_report(report))
        print(format_report(report))
        return report

    def _reference_frames(self, student: Any) -> list[Frame]:
        from lam.data.formats import read_any

        known = set(student.type_map)
        frames: list[Frame] = []
        for path in self.report.reference_data:
            for frame in read_any(path):
                if frame.forces is not None and {_symbol(z) for z in frame.numbers} <= known:
                    frames.append(frame)
                if len(frames) >= self.report.reference_frames:
                    return frames
        return frames

    def _speed_frames(self) -> list[Frame]:
        """``report.speed_frames`` explored frames, taken in turn from every exploration run (a mix of all the
        starting structures), or the starting structures themselves when nothing was explored."""
        runs = [self.store.load_frames("explore", f.stem)[0]
                for f in sorted((self.output_dir / "tasks" / "explore").glob("*.npz"))]
        mixed = [run[i] for i in range(max((len(r) for r in runs), default=0)) for run in runs if i < len(run)]
        base = mixed or _read_structures(self.structures)
        reps = int(np.ceil(self.report.speed_frames / max(1, len(base))))
        return (base * reps)[: self.report.speed_frames]


def _symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[int(z)]


def format_report(report: Mapping[str, Any]) -> str:
    lines = [f"# Distillation report (head {report['head']})", "",
             "| iteration | explored | accurate | candidate | failed | labelled | train frames |",
             "|---|---|---|---|---|---|---|"]
    for r in report["iterations"]:
        lines.append(f"| {r['iteration']} | {r['explored']} | {r['accurate']:.2f} | {r['candidate']:.2f} | "
                     f"{r['failed']:.2f} | {r['labelled']} | {r['train_frames']} |")
    lines.append("")
    lines.append(f"converged: {report['converged']}")
    if "holdout" in report:
        h = report["holdout"]
        lines.append(f"hold-out ({h['frames']} teacher-labelled frames): student vs teacher force RMSE "
                     f"{1000 * h['student_vs_teacher_force_rmse']:.1f} meV/Å"
                     + (f" (median over frames {1000 * h['median_frame_force_rmse']:.1f} meV/Å)"
                        if "median_frame_force_rmse" in h else "") + ", energy RMSE "
                     f"{1000 * h['student_vs_teacher_energy_rmse_per_atom']:.2f} meV/atom")
    if "reference" in report:
        r = report["reference"]
        lines.append(f"reference data ({r['frames']} frames): force RMSE teacher {1000 * r['teacher_force_rmse']:.1f}"
                     f" meV/Å, student {1000 * r['student_force_rmse']:.1f} meV/Å")
    s = report["speed"]
    threads = f", {s['threads']} thread(s)" if "threads" in s else ""
    lines.append(f"speed ({s['frames']} frames, {s['atoms']} atoms per call, energy+forces, 1 batch{threads}, "
                 f"student embedding tabulated as in MD): end to end (neighbour lists included) teacher "
                 f"{s['teacher_ms']:.1f} ms, student {s['student_ms']:.1f} ms → "
                 f"{s['speedup']:.1f}×; model only teacher {s['teacher_model_ms']:.1f} ms, student "
                 f"{s['student_model_ms']:.1f} ms → {s['model_speedup']:.1f}×")
    lines.append(f"student model: {report['student']}  (lam.load)")
    return "\n".join(lines) + "\n"


def run_distill(**kwargs: Any) -> dict[str, Any]:
    """Hydra target: ``DistillLoop(**cfg).run()``."""
    from lam.runtime import configure_allocator

    configure_allocator()  # keep large freed tensors in the heap (see lam.runtime)
    return DistillLoop(**kwargs).run()
