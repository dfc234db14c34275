"""Speed and memory of the lam models on liquid water, with DeePMD-kit's own DPA-2 as the baseline.

For every preset (DPA-2 ``small`` / ``medium`` / ``large`` and the se_e2_a ``student``), dtype and size it
measures, in a fresh subprocess (so that the peak RSS is that case's own):

* inference (energy + forces): ``e2e`` = neighbour list + batch + model from an ``ase.Atoms``, the path of
  ``LAMCalculator`` (``lam.md.calculator.atoms_to_batch``), ``model`` = the model call of the same step; ms
  per step and µs per atom-step (median of ``--repeats`` steps after ``--warmup`` warm-ups);
* MD step (``--md-steps``, 0 skips it): mean time of a velocity-Verlet step (0.5 fs, 300 K) of ASE with
  ``LAMCalculator`` (Verlet neighbour list with its default 0.5 Å skin, searched again as atoms move), the
  cost per step a user sees in MD; the number of neighbour searches in those steps is recorded;
* one training step on a prebuilt graph: forward, energy + force loss (forces with ``create_graph``),
  backward, Adam step;
* peak memory: ``ru_maxrss`` rise over the case (CPU), or ``torch.cuda.max_memory_allocated`` (GPU).

Sizes are the 192-atom DeePMD-kit water frame (``tests/data/deepmd_water_64h2o``) replicated k x k x k
(192, 1536, ...); a size below 192 that is a multiple of 3 keeps that many whole molecules of the frame
(for smoke tests).

DeePMD-kit baseline (same run, same coordinates): with ``--deepmd-python VENV/bin/python`` (see
``scripts/bench/setup_deepmd_venv.sh``) or when ``deepmd`` is importable here, a helper subprocess builds
DeePMD-kit's DPA-2 from the ``"model"`` section of its ``examples/water/dpa2/input_torch_{small,medium}.json``
(precision set to the dtype measured) and times energy + forces with its own neighbour list
(``extend_input_and_build_neighbor_list`` then ``forward_lower``, which is what its ``forward`` does).

    python scripts/bench/bench_model.py --deepmd-python /tmp/dpvenv/bin/python --json model_bench.json
    python scripts/bench/bench_model.py --profile medium      # torch.profiler breakdown, 192 atoms
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
             "DP_INTRA_OP_PARALLELISM_THREADS", "DP_INTER_OP_PARALLELISM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
WATER = REPO / "tests" / "data" / "deepmd_water_64h2o" / "data_0"
TYPE_MAP = ["O", "H"]
BASE_ATOMS = 192
DPA2_PRESETS = ("small", "medium", "large")
RESULT_TAG = "BENCH_RESULT "

# Targets printed as PASS/FAIL lines.
TARGET_VS_DEEPMD = 1.5  # lam at least this many times faster than DeePMD-kit (e2e, small and medium)
TARGET_PER_ATOM_FLAT = 1.2  # µs/atom at the largest size / at the smallest size
TARGET_STUDENT = 30.0  # medium teacher time / student time (e2e, MD step and model are all printed)


# --------------------------------------------------------------------------- DeePMD-kit model configs
def deepmd_dpa2_config(preset: str, dtype: str = "float32") -> dict[str, Any]:
    """The ``"model"`` section of DeePMD-kit's ``examples/water/dpa2/input_torch_{preset}.json``.

    Rebuilt here as a dict (small: 3 repformer layers without g2 attention; medium: 6 layers with it);
    ``precision`` is set to ``dtype`` (the upstream files use float64).
    """
    if preset not in ("small", "medium"):
        raise ValueError(f"no DeePMD-kit example config for preset {preset!r} (have 'small', 'medium')")
    repinit = {
        "tebd_dim": 8, "rcut": 6.0, "rcut_smth": 0.5, "nsel": 120, "neuron": [25, 50, 100],
        "axis_neuron": 12, "activation_function": "tanh", "three_body_sel": 48, "three_body_rcut": 4.0,
        "three_body_rcut_smth": 3.5, "use_three_body": True,
    }
    repformer = {
        "rcut": 4.0, "rcut_smth": 3.5, "nsel": 48, "nlayers": 3 if preset == "small" else 6,
        "g1_dim": 128, "g2_dim": 32, "attn2_hidden": 32, "attn2_nhead": 4, "attn1_hidden": 128,
        "attn1_nhead": 4, "axis_neuron": 4, "update_h2": False, "update_g1_has_conv": True,
        "update_g1_has_grrg": True, "update_g1_has_drrd": True, "update_g1_has_attn": False,
        "update_g2_has_g1g1": False, "update_g2_has_attn": preset != "small", "update_style": "res_residual",
        "update_residual": 0.01, "update_residual_init": "norm", "attn2_has_gate": True,
        "use_sqrt_nnei": True, "g1_out_conv": True, "g1_out_mlp": True,
    }
    return copy.deepcopy({
        "type_map": list(TYPE_MAP),
        "descriptor": {"type": "dpa2", "repinit": repinit, "repformer": repformer, "precision": dtype,
                       "add_tebd_to_repinit_out": False},
        "fitting_net": {"neuron": [240, 240, 240], "resnet_dt": True, "precision": dtype, "seed": 1},
    })


# --------------------------------------------------------------------------- structures
def _base_frame() -> Any:
    from lam.data.formats.deepmd_npy import read_deepmd

    return next(iter(read_deepmd(WATER)))


def water_frame(n_atoms: int) -> Any:
    """Liquid water with ``n_atoms`` atoms as a :class:`lam.data.frame.Frame` (labels kept, replicated).

    ``n_atoms = 192 k^3`` replicates the DeePMD-kit frame k x k x k; ``n_atoms < 192`` (a multiple of 3) keeps
    the first ``n_atoms / 3`` oxygens with their two nearest hydrogens in the same cell.
    """
    from lam.data.frame import Frame

    base = _base_frame()
    k = round((n_atoms / BASE_ATOMS) ** (1 / 3))
    if k >= 1 and BASE_ATOMS * k**3 == n_atoms:
        shifts = np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing="ij"), -1).reshape(-1, 3) @ base.cell
        pos = (shifts[:, None, :] + base.positions[None]).reshape(-1, 3)
        return Frame(numbers=np.tile(base.numbers, k**3), positions=pos, cell=base.cell * k, pbc=base.pbc,
                     energy=None if base.energy is None else base.energy * k**3,
                     forces=None if base.forces is None else np.tile(base.forces, (k**3, 1)))
    if 0 < n_atoms < BASE_ATOMS and n_atoms % 3 == 0:
        oxygens = np.flatnonzero(base.numbers == 8)[: n_atoms // 3]
        hydrogens = np.flatnonzero(base.numbers == 1)
        inv = np.linalg.inv(base.cell)
        keep = []
        for o in oxygens:
            d = base.positions[hydrogens] - base.positions[o]
            d -= np.round(d @ inv) @ base.cell  # minimum image in the cubic box
            keep += [o, *hydrogens[np.argsort(np.linalg.norm(d, axis=1))[:2]]]
        keep = np.array(keep)
        return Frame(numbers=base.numbers[keep], positions=base.positions[keep], cell=base.cell, pbc=base.pbc,
                     energy=None, forces=None if base.forces is None else base.forces[keep])
    raise ValueError(f"--sizes: {n_atoms} atoms is neither 192 k^3 (k = 1, 2, ...) nor a multiple of 3 below 192")


# --------------------------------------------------------------------------- timing helpers
def _sync(device: Any) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _ms(values: Sequence[float]) -> float:
    return 1e3 * float(statistics.median(values))


def _steps(fn: Callable[[], Any], repeats: int, warmup: int) -> list[Any]:
    for _ in range(warmup):
        fn()
    return [fn() for _ in range(repeats)]


def build_lam_model(preset: str, dtype: str, device: str, compile_mode: str = "none") -> Any:
    """``lam.build_model(preset)`` for water on ``device``; ``compile_mode`` 'script' uses TorchScript."""
    import torch

    import lam

    model = lam.build_model(preset, type_map=TYPE_MAP, heads=["water"], dtype=getattr(torch, dtype), seed=0)
    model = model.to(device)
    if compile_mode != "none":
        model.compile_energy(compile_mode)
    return model


def _graph(frame: Any, cutoff: float, dtype: Any, device: str) -> Any:
    from lam.data.graph import AtomicGraph, collate

    return collate([AtomicGraph.from_frame(frame, cutoff, dtype=dtype)]).to(device)


def time_inference(model: Any, frame: Any, repeats: int, warmup: int, device: str) -> dict[str, float]:
    """Energy + forces: e2e (neighbour list + graph + model) and the model part of the same steps, in ms."""
    from lam.data.graph import frame_to_atoms
    from lam.md.calculator import atoms_to_batch

    model.eval()
    atoms = frame_to_atoms(frame)

    def step() -> tuple[float, float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        batch = atoms_to_batch([atoms], model.rcut, dtype=model.dtype, device=device)  # as LAMCalculator does
        _sync(device)
        t1 = time.perf_counter()
        out = model(batch, compute_forces=True)
        out["forces"].detach().cpu()
        _sync(device)
        t2, c2 = time.perf_counter(), time.process_time()
        return t2 - t0, t2 - t1, c2 - c0

    times = _steps(step, repeats, warmup)
    return {"infer_e2e_ms": _ms([t[0] for t in times]), "infer_model_ms": _ms([t[1] for t in times]),
            "infer_e2e_cpu_ms": _ms([t[2] for t in times])}


def time_md(model: Any, frame: Any, steps: int, warmup: int, device: str) -> dict[str, float]:
    """Mean wall / CPU ms of ``steps`` ASE velocity-Verlet steps (0.5 fs, 300 K) driven by ``LAMCalculator``."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from lam.data.graph import frame_to_atoms
    from lam.md.calculator import LAMCalculator

    atoms = frame_to_atoms(frame)
    calc = LAMCalculator(model, device=device, compress=False)  # run_case compressed it already (or not)
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dyn.run(max(warmup, 1))
    verlet = calc.neighbor_list(model.rcut)
    searches0 = verlet.n_searches
    t0, c0 = time.perf_counter(), time.process_time()
    dyn.run(steps)
    _sync(device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"md_ms": 1e3 * wall / steps, "md_cpu_ms": 1e3 * cpu / steps, "md_steps": steps,
            "md_searches": verlet.n_searches - searches0, "md_skin": calc.skin}


def time_train_step(model: Any, batch: Any, repeats: int, warmup: int, device: str) -> dict[str, float]:
    """One optimisation step on a prebuilt graph (energy + force MSE, forces with create_graph), in ms."""
    import torch

    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    n = batch["pos"].shape[0]

    def step() -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        out = model(batch, compute_forces=True)  # training mode: forces keep their graph
        loss = ((out["energy"] - batch["energy"]) / n).pow(2).mean() + (out["forces"] - batch["forces"]).pow(2).mean()
        loss.backward()
        opt.step()
        _sync(device)
        return time.perf_counter() - t0, time.process_time() - c0

    times = _steps(step, repeats, warmup)
    return {"train_ms": _ms([t[0] for t in times]), "train_cpu_ms": _ms([t[1] for t in times])}


def git_state() -> str:
    """Commit of the working tree and whether the model code differs from it (``<sha>+dirty``)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "lam/models", "lam/data"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def run_case(preset: str, dtype: str, n_atoms: int, repeats: int = 5, warmup: int = 2, device: str = "cpu",
             compile_mode: str = "none", train: bool = True, compress: bool = True,
             md_steps: int = 0) -> dict[str, Any]:
    """Measure one (preset, dtype, size) in this process: times, µs/atom-step, parameters, peak memory.

    ``compress`` tabulates the embedding for inference where the model supports it (``Potential.compress``,
    as the ASE calculator does); the training step always runs the network.
    """
    import torch

    from lam.runtime import configure_allocator

    torch.set_num_threads(1)
    malloc_tuned = configure_allocator()  # as lam's entry points do (LAM_MALLOC_TUNING=0 turns it off)
    frame = water_frame(n_atoms)
    model = build_lam_model(preset, dtype, device, compile_mode)
    compressed = bool(model.compress()) if compress else False
    batch = _graph(frame, model.rcut, model.dtype, device)
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
        base_gpu = torch.cuda.memory_allocated(device)
    rss0 = _max_rss_mb()
    out: dict[str, Any] = {
        "code": "lam", "preset": preset, "dtype": dtype, "n_atoms": frame.n_atoms, "device": device,
        "compile": compile_mode, "compressed": compressed, "commit": git_state(), "malloc_tuned": malloc_tuned,
        "params": sum(p.numel() for p in model.parameters()),
        "edges": int(batch["edge_index"].shape[1]),
    }
    out.update(time_inference(model, frame, repeats, warmup, device))
    if md_steps > 0:
        out.update(time_md(model, frame, md_steps, warmup, device))
    out["infer_mem_mb"] = ((torch.cuda.max_memory_allocated(device) - base_gpu) / 2**20 if on_gpu
                           else _max_rss_mb() - rss0)
    if train:
        out.update(time_train_step(model, batch, repeats, warmup, device))
        out["train_mem_mb"] = ((torch.cuda.max_memory_allocated(device) - base_gpu) / 2**20 if on_gpu
                               else _max_rss_mb() - rss0)
    for key in ("infer_e2e", "infer_model", "md", "train"):
        if f"{key}_ms" in out:
            out[f"{key}_us_atom"] = 1e3 * out[f"{key}_ms"] / frame.n_atoms
    return out


# --------------------------------------------------------------------------- DeePMD-kit worker
def deepmd_case(preset: str, dtype: str, coord: np.ndarray, atype: np.ndarray, cell: np.ndarray, repeats: int,
                warmup: int, device: str) -> dict[str, Any]:
    """Time DeePMD-kit's DPA-2 (energy + forces, its own neighbour list); runs where ``deepmd`` imports."""
    if device == "cpu":
        os.environ["DEVICE"] = "cpu"  # deepmd.pt.utils.env picks its device from this at import
    import torch
    from deepmd.pt.model.model import get_model
    from deepmd.pt.utils.nlist import extend_input_and_build_neighbor_list
    from deepmd.utils.argcheck import model_args

    torch.set_num_threads(1)
    params = model_args().normalize_value(deepmd_dpa2_config(preset, dtype), trim_pattern="_*")
    model = get_model(params).to(device)
    model.eval()
    # coordinates and cell in DeePMD-kit's global precision (float64), as its own forward builds its neighbour
    # list; the descriptor and fitting net cast to the model precision inside
    coord_t = torch.tensor(coord, dtype=torch.float64, device=device).reshape(1, -1, 3)
    atype_t = torch.tensor(atype, dtype=torch.long, device=device).reshape(1, -1)
    box_t = torch.tensor(cell, dtype=torch.float64, device=device).reshape(1, 9)
    n = coord_t.shape[1]
    rss0 = _max_rss_mb()
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
        base_gpu = torch.cuda.memory_allocated(device)

    def step() -> tuple[float, float, float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        ext_coord, ext_atype, mapping, nlist = extend_input_and_build_neighbor_list(
            coord_t, atype_t, model.get_rcut(), model.get_sel(), mixed_types=model.mixed_types(), box=box_t)
        _sync(device)
        t1 = time.perf_counter()
        res = model.forward_lower(ext_coord, ext_atype, nlist, mapping)
        ext_force = res["extended_force"]
        force = torch.zeros_like(coord_t).index_add_(1, mapping[0], ext_force)  # ghosts back to local atoms
        force.detach().cpu()
        _sync(device)
        t2, c2 = time.perf_counter(), time.process_time()
        return t2 - t0, t2 - t1, c2 - c0, float(res["energy"].detach().sum())

    times = _steps(step, repeats, warmup)
    ref = model(coord_t, atype_t, box=box_t)  # its public forward: same energy as the timed path
    ref = {k: v.detach() for k, v in ref.items()}
    e_lower = times[-1][3]
    if not math.isclose(float(ref["energy"].sum()), e_lower, rel_tol=1e-4, abs_tol=1e-3):
        raise RuntimeError(f"DeePMD-kit forward_lower energy {e_lower} != forward {float(ref['energy'].sum())}")
    import deepmd

    return {
        "code": "deepmd", "deepmd_version": deepmd.__version__, "preset": preset, "dtype": dtype, "n_atoms": n,
        "device": device, "params": sum(p.numel() for p in model.parameters()),
        "infer_e2e_ms": _ms([t[0] for t in times]), "infer_model_ms": _ms([t[1] for t in times]),
        "infer_e2e_cpu_ms": _ms([t[2] for t in times]),
        "infer_mem_mb": ((torch.cuda.max_memory_allocated(device) - base_gpu) / 2**20 if on_gpu
                         else _max_rss_mb() - rss0),
        "infer_e2e_us_atom": 1e3 * _ms([t[0] for t in times]) / n,
        "infer_model_us_atom": 1e3 * _ms([t[1] for t in times]) / n,
    }


def deepmd_python(explicit: str | None) -> str | None:
    """Interpreter that can import deepmd: ``explicit``, else this one if it can, else None."""
    if explicit:
        return explicit
    try:
        import deepmd.pt  # noqa: F401
    except Exception:  # noqa: BLE001 - absent or broken install: no baseline
        return None
    return sys.executable


# --------------------------------------------------------------------------- subprocess orchestration
def _run_worker(python: str, args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    cmd = [python, str(Path(__file__).resolve()), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(REPO))
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    raise RuntimeError(f"worker {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def run_all(sizes: Sequence[int], presets: Sequence[str], dtypes: Sequence[str], repeats: int, warmup: int,
            device: str, compile_mode: str, dp_python: str | None, train: bool = True, compress: bool = True,
            md_steps: int = 0, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every lam case (and DeePMD-kit case for small / medium) in its own fresh subprocess."""
    results: list[dict[str, Any]] = []
    common = ["--repeats", str(repeats), "--warmup", str(warmup), "--device", device]
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in dtypes:
            for preset in presets:
                for n in sizes:
                    extra = (["--compile", compile_mode, "--md-steps", str(md_steps)]
                             + ([] if train else ["--no-train"]) + ([] if compress else ["--no-compress"]))
                    res = _run_worker(sys.executable, ["--worker", preset, dtype, str(n), *common, *extra])
                    results.append(res)
                    log(f"  lam    {preset:7s} {dtype} {n:6d} atoms: e2e {res['infer_e2e_ms']:9.1f} ms, "
                        f"MD step {res.get('md_ms', float('nan')):9.1f} ms, "
                        f"train {res.get('train_ms', float('nan')):9.1f} ms")
                    if dp_python and preset in ("small", "medium"):
                        frame = water_frame(n)
                        coords = Path(tmp) / f"water_{n}.npz"
                        atype = np.array([TYPE_MAP.index({8: "O", 1: "H"}[int(z)]) for z in frame.numbers])
                        np.savez(coords, coord=frame.positions, atype=atype, cell=frame.cell)
                        env = dict(os.environ)
                        env.pop("PYTHONPATH", None)
                        try:
                            dres = _run_worker(dp_python, ["--deepmd-worker", preset, dtype, str(coords), *common],
                                               env=env)
                        except RuntimeError as err:
                            log(f"  deepmd {preset} {dtype} {n}: FAILED: {err}")
                            continue
                        results.append(dres)
                        log(f"  deepmd {preset:7s} {dtype} {n:6d} atoms: e2e {dres['infer_e2e_ms']:9.1f} ms")
    return results


# --------------------------------------------------------------------------- reporting
def _find(results: Sequence[dict[str, Any]], code: str, preset: str, dtype: str, n: int) -> dict[str, Any] | None:
    for r in results:
        if (r["code"], r["preset"], r["dtype"], r["n_atoms"]) == (code, preset, dtype, n):
            return r
    return None


def table(results: Sequence[dict[str, Any]]) -> str:
    """Markdown table: one row per code/preset/dtype/size (wall-clock medians; CPU = process time)."""
    head = ("| code | preset | dtype | atoms | params | e2e ms | e2e µs/atom | e2e CPU ms | model ms | "
            "model µs/atom | MD step ms (searches) | train ms | train µs/atom | peak MB infer / train | "
            "DeePMD-kit / lam e2e (CPU) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        ratio = ""
        if r["code"] == "lam":
            d = _find(results, "deepmd", r["preset"], r["dtype"], r["n_atoms"])
            if d:
                ratio = (f"{d['infer_e2e_ms'] / r['infer_e2e_ms']:.2f}x "
                         f"({d['infer_e2e_cpu_ms'] / r['infer_e2e_cpu_ms']:.2f}x)")
        train = (f"{r['train_ms']:.1f} | {r['train_us_atom']:.0f}" if "train_ms" in r else "— | —")
        mem = f"{r['infer_mem_mb']:.0f}" + (f" / {r['train_mem_mb']:.0f}" if "train_mem_mb" in r else "")
        code = "lam" if r["code"] == "lam" else "DeePMD-kit"
        md = f"{r['md_ms']:.1f} ({r['md_searches']}/{r['md_steps']})" if "md_ms" in r else "—"
        lines.append(
            f"| {code} | {r['preset']} | {r['dtype']} | {r['n_atoms']} | {r['params']:,} | "
            f"{r['infer_e2e_ms']:.1f} | {r['infer_e2e_us_atom']:.0f} | {r['infer_e2e_cpu_ms']:.1f} | "
            f"{r['infer_model_ms']:.1f} | {r['infer_model_us_atom']:.0f} | {md} | {train} | {mem} | {ratio} |")
    return "\n".join(lines)


def targets(results: Sequence[dict[str, Any]], clock: str = "wall") -> list[str]:
    """PASS/FAIL lines for the three targets that the results can decide, on wall-clock or CPU time."""
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    cpu = "_cpu" if clock == "cpu" else ""
    e2e, train = f"infer_e2e{cpu}_ms", f"train{cpu}_ms"
    vs_cols = [("e2e", e2e)] + ([] if cpu else [("model", "infer_model_ms")])
    lines = []
    lam_rows = [r for r in results if r["code"] == "lam"]
    for preset, dtype in sorted({(r["preset"], r["dtype"]) for r in lam_rows}):
        sizes = sorted({r["n_atoms"] for r in lam_rows if (r["preset"], r["dtype"]) == (preset, dtype)})
        if preset in ("small", "medium"):
            for n in sizes:
                mine, theirs = _find(results, "lam", preset, dtype, n), _find(results, "deepmd", preset, dtype, n)
                if theirs is None:
                    lines.append(f"SKIP vs DeePMD-kit {preset} {dtype} {n} atoms: no DeePMD-kit result")
                    continue
                for label, col in vs_cols:
                    ratio = theirs[col] / mine[col]
                    ok = "PASS" if ratio >= TARGET_VS_DEEPMD else "FAIL"
                    lines.append(f"{ok} {ratio:.2f}x faster than DeePMD-kit (target >= {TARGET_VS_DEEPMD}x): "
                                 f"{preset} {dtype} {n} atoms {label} {clock} "
                                 f"({theirs[col]:.1f} vs {mine[col]:.1f} ms)")
        if len(sizes) >= 2:
            lo, hi = _find(results, "lam", preset, dtype, sizes[0]), _find(results, "lam", preset, dtype, sizes[-1])
            for col in (e2e, train):
                if col not in lo or col not in hi:
                    continue
                per_lo, per_hi = 1e3 * lo[col] / sizes[0], 1e3 * hi[col] / sizes[-1]
                ratio = per_hi / per_lo
                ok = "PASS" if ratio <= TARGET_PER_ATOM_FLAT else "FAIL"
                lines.append(f"{ok} per-atom cost {sizes[-1]} / {sizes[0]} atoms = {ratio:.2f} "
                             f"(target <= {TARGET_PER_ATOM_FLAT}): {preset} {dtype} "
                             f"{'train' if col == train else 'e2e'} {clock} ({per_lo:.0f} -> {per_hi:.0f} µs/atom)")
    for dtype in sorted({r["dtype"] for r in lam_rows}):
        for n in sorted({r["n_atoms"] for r in lam_rows}):
            teacher, student = _find(results, "lam", "medium", dtype, n), _find(results, "lam", "student", dtype, n)
            if teacher and student:
                cols = [("e2e", e2e), ("MD step", f"md{cpu}_ms")] + ([] if cpu else [("model", "infer_model_ms")])
                for label, col in cols:
                    if col not in teacher or col not in student:
                        continue
                    ratio = teacher[col] / student[col]
                    ok = "PASS" if ratio >= TARGET_STUDENT else "FAIL"
                    lines.append(f"{ok} student {ratio:.1f}x faster than medium (target >= {TARGET_STUDENT:.0f}x): "
                                 f"{dtype} {n} atoms {label} {clock} ({teacher[col]:.1f} vs {student[col]:.1f} ms)")
    return lines


def report(results: Sequence[dict[str, Any]]) -> str:
    """The table, then the target lines on wall-clock and on CPU time."""
    lines = [table(results), ""]
    for clock in ("wall", "cpu"):
        lines += targets(results, clock)
    return "\n".join(lines)


def merge_results(paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Results of several ``--json`` files; a case (code, preset, dtype, atoms) in a later file replaces it."""
    merged: dict[tuple, dict[str, Any]] = {}
    for path in paths:
        try:
            rows = json.loads(Path(path).read_text())["results"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a bench_model --json file ({err})") from err
        for r in rows:
            merged[(r["code"], r["preset"], r["dtype"], r["n_atoms"])] = r
    return list(merged.values())


# --------------------------------------------------------------------------- profiler
def profile_breakdown(preset: str = "medium", n_atoms: int = BASE_ATOMS, dtype: str = "float32",
                      device: str = "cpu", steps: int = 3, row_limit: int = 25) -> str:
    """torch.profiler table of energy + forces: time per descriptor block (forward) and per op."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    torch.set_num_threads(1)
    frame = water_frame(n_atoms)
    model = build_lam_model(preset, dtype, device)
    model.compress()  # the inference path (no-op for DPA-2)
    model.eval()
    batch = _graph(frame, model.rcut, model.dtype, device)
    blocks: dict[str, Any] = {}
    for name, module in model.named_modules():
        depth = name.count(".")
        if name and (depth <= 1 or (depth == 2 and name.split(".")[1] in ("layers", "repformer_layers"))):
            blocks[name] = module

    def pre(name: str) -> Callable[..., None]:
        def hook(_module: Any, _inp: Any) -> None:
            rf = record_function(f"[module] {name}")
            rf.__enter__()
            _module._bench_rf = rf

        return hook

    def post(_module: Any, _inp: Any, _out: Any) -> None:
        _module._bench_rf.__exit__(None, None, None)

    handles = [m.register_forward_pre_hook(pre(n)) for n, m in blocks.items()]
    handles += [m.register_forward_hook(post) for m in blocks.values()]
    model(batch, compute_forces=True)  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            with record_function("[step] forward+forces"):
                model(batch, compute_forces=True)
    for h in handles:
        h.remove()
    avg = prof.key_averages()
    total = next(e.cpu_time_total for e in avg if e.key == "[step] forward+forces")
    lines = [f"profile: {preset} {dtype} {frame.n_atoms} atoms, {steps} steps, "
             f"{total / steps / 1e3:.1f} ms per step (profiler overhead included)", "",
             "forward time per module (inclusive; backward is attributed to ops below):"]
    for e in sorted((e for e in avg if e.key.startswith("[module]")), key=lambda e: -e.cpu_time_total):
        lines.append(f"  {e.key[9:]:45s} {e.cpu_time_total / steps / 1e3:9.1f} ms  "
                     f"{100 * e.cpu_time_total / total:5.1f} %")
    lines += ["", "ops by self CPU time (forward + backward):",
              avg.table(sort_by="self_cpu_time_total", row_limit=row_limit)]
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI
def _machine() -> str:
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
            f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[192, 1536])
    p.add_argument("--presets", nargs="+", default=["small", "medium", "student"])
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    p.add_argument("--compile", default="none", choices=["none", "script"], help="Potential.compile_energy")
    p.add_argument("--no-train", action="store_true", help="skip the training step")
    p.add_argument("--md-steps", type=int, default=20, help="ASE MD steps timed through LAMCalculator (0: none)")
    p.add_argument("--no-compress", action="store_true", help="inference without Potential.compress()")
    p.add_argument("--report", nargs="+", default=None, metavar="JSON",
                   help="print the table and targets of --json files (later files replace equal cases) and exit")
    p.add_argument("--deepmd-python", default=None, help="python of a venv with deepmd-kit (baseline)")
    p.add_argument("--no-deepmd", action="store_true", help="skip the DeePMD-kit baseline")
    p.add_argument("--json", default=None, help="write all results (and the machine) to this file")
    p.add_argument("--profile", default=None, metavar="PRESET", help="print a torch.profiler breakdown and exit")
    p.add_argument("--worker", nargs=3, metavar=("PRESET", "DTYPE", "N"), help=argparse.SUPPRESS)
    p.add_argument("--deepmd-worker", nargs=3, metavar=("PRESET", "DTYPE", "NPZ"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.repeats < 1 or a.warmup < 0 or a.md_steps < 0:
        p.error("--repeats must be >= 1, --warmup >= 0 and --md-steps >= 0")

    if a.worker:
        preset, dtype, n = a.worker
        res = run_case(preset, dtype, int(n), a.repeats, a.warmup, a.device, a.compile, train=not a.no_train,
                       compress=not a.no_compress, md_steps=a.md_steps)
        print(RESULT_TAG + json.dumps(res), flush=True)
        return 0
    if a.deepmd_worker:
        preset, dtype, npz = a.deepmd_worker
        data = np.load(npz)
        res = deepmd_case(preset, dtype, data["coord"], data["atype"], data["cell"], a.repeats, a.warmup, a.device)
        print(RESULT_TAG + json.dumps(res), flush=True)
        return 0
    if a.report:
        print(report(merge_results(a.report)))
        return 0
    if a.profile:
        print(profile_breakdown(a.profile, a.sizes[0], a.dtypes[0], a.device))
        return 0

    for preset in a.presets:
        if preset not in (*DPA2_PRESETS, "student"):
            p.error(f"unknown preset {preset!r}")
    for n in a.sizes:
        water_frame(n)  # clear error on a bad size before anything runs
    dp_python = None if a.no_deepmd else deepmd_python(a.deepmd_python)
    machine = _machine()
    print(f"machine: {machine}")
    print(f"DeePMD-kit baseline: {dp_python or 'not available (pass --deepmd-python)'}")
    results = run_all(a.sizes, a.presets, a.dtypes, a.repeats, a.warmup, a.device, a.compile, dp_python,
                      train=not a.no_train, compress=not a.no_compress, md_steps=a.md_steps)
    print()
    print(report(results))
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if a.json:
        Path(a.json).write_text(json.dumps({"machine": machine, "commit": git_state(), "argv": sys.argv,
                                            "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
