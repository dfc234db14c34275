"""MD benchmark: conservative vs direct-force vs multiple time stepping (r-RESPA) on liquid water.

For each system size (192 atoms = tests/data/deepmd_water_64h2o, and its 2x2x2 replica with 1,536 atoms) it
runs, from the same initial velocities at 300 K, float64:

* ``conservative``: velocity Verlet at the inner step ``h`` with ``F = -dE/dr`` (the named baseline);
* ``direct``: velocity Verlet at ``h`` with the direct-force head only (energy logged with the conservative
  model every ``--log-direct`` steps, which adds ``1/log_direct`` of a conservative call per step);
* ``mts M=4``, ``mts M=8``: r-RESPA, inner step ``h`` with direct forces, outer step ``M h`` with the
  conservative correction.

Speed is simulated time per CPU second, given as inner steps ``h`` per second so the columns compare
directly; the ratio is against the conservative run. Drift is the least-squares slope of Etot in
meV/atom/ps. Target: MTS M=8 >= 1.6x faster than conservative with |drift| <= 2x the conservative |drift|.

The model: ``--model`` (any lam.hub source with a direct-force head), or a DPA-2 (``--preset``) with a
direct-force head built here, trained briefly on the water frames (``--train-steps``) and with its direct
head distilled onto its own conservative forces (``--distill-steps``).

    python scripts/bench/bench_md.py [--model SRC --head NAME] [--sizes 1 2] [--fs 80]
"""

from __future__ import annotations

import argparse
import time
from itertools import islice
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
WATER = REPO / "tests" / "data" / "deepmd_water_64h2o"


def prepare_model(args: argparse.Namespace):
    """Load ``--model`` or build + briefly train a DPA-2 with a direct-force head; returns (model, head)."""
    from lam import build_model
    from lam.data.formats import read_any
    from lam.md.hybrid import distill_direct_head, quick_fit
    from lam.md.run import load_structure

    if args.model:
        from lam.hub import load

        model = load(args.model)
        head = args.head or model.head_names[0]
        if model.direct_force_head is None:
            raise SystemExit(f"{args.model}: the model has no direct-force head")
        return model.double().eval(), head
    model = build_model(args.preset, type_map=["O", "H"], heads=["water"], dtype="float32", seed=0,
                        direct_force={"rcut": 4.0, "hidden": 32, "num_basis": 8})
    frames = list(islice(read_any(WATER / "data_1"), 0, 200, 10))
    t0 = time.process_time()
    losses = quick_fit(model, frames, args.train_steps, lr=2e-3) if args.train_steps else []
    print(f"trained {args.train_steps} steps in {time.process_time() - t0:.0f} CPU s"
          + (f", loss {losses[0]:.3g} -> {np.mean(losses[-5:]):.3g}" if losses else ""), flush=True)
    model = model.double().eval()
    structures = [load_structure(WATER / "data_2", index=i) for i in range(0, 80, 20)]
    t0 = time.process_time()
    rms = distill_direct_head(model, structures, args.distill_steps, lr=3e-3)
    print(f"direct head distilled onto -dE/dr ({args.distill_steps} steps, "
          f"{time.process_time() - t0:.0f} CPU s): RMS |F_NC - F_C| = {rms * 1000:.0f} meV/Å", flush=True)
    return model, "water"


def bench_size(model, head: str, rep: int, args: argparse.Namespace) -> list[dict]:
    """The four runs on the water box replicated ``rep`` times per axis."""
    from lam.md.run import load_structure, run_md

    atoms = load_structure(WATER / "data_0").repeat(rep)
    h = args.h
    inner_steps = int(round(args.fs / h / 8)) * 8
    runs = [("conservative", dict(ensemble="nve", dt=h, steps=inner_steps, log_every=8)),
            ("direct", dict(ensemble="nve", dt=h, steps=inner_steps, log_every=args.log_direct, direct=True)),
            ("mts M=4", dict(ensemble="mts", dt=4 * h, n_inner=4, steps=inner_steps // 4, log_every=2)),
            ("mts M=8", dict(ensemble="mts", dt=8 * h, n_inner=8, steps=inner_steps // 8, log_every=1))]
    rows = []
    for name, kw in runs:
        t0 = time.process_time()
        r = run_md(model, atoms, head=head, temperature=300.0, seed=0, progress=False, **kw)
        cpu = time.process_time() - t0
        rows.append({"atoms": len(atoms), "method": name, "inner_steps": inner_steps, "cpu_s": cpu,
                     "wall_s": r.wall_s, "speed": inner_steps / cpu, "drift": r.drift_mev_atom_ps,
                     "t_end": float(r.temperature_k[-1]), "calls": r.force_calls, "passes": r.model_passes})
        print(f"  {len(atoms)} atoms {name:13s} {inner_steps / cpu:7.3f} h-steps/CPU-s  drift "
              f"{r.drift_mev_atom_ps:+.4g} meV/atom/ps  T_end {r.temperature_k[-1]:.0f} K  {r.force_calls}",
              flush=True)
    base = rows[0]
    for row in rows:
        row["ratio"] = row["speed"] / base["speed"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="lam.hub source of a model with a direct-force head")
    parser.add_argument("--head", help="head of --model (default: its first)")
    parser.add_argument("--preset", default="small", help="DPA-2 preset built when --model is not given")
    parser.add_argument("--train-steps", type=int, default=30, help="quick_fit steps on water (0: random init)")
    parser.add_argument("--distill-steps", type=int, default=300, help="direct-head distillation steps")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2], help="replications per axis")
    parser.add_argument("--h", type=float, default=0.5, help="inner time step (fs)")
    parser.add_argument("--fs", type=float, default=80.0, help="simulated time per run (fs); 1,536 atoms: /4")
    parser.add_argument("--log-direct", type=int, default=16, help="energy-log interval of the direct run")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, head = prepare_model(args)
    table = []
    for rep in args.sizes:
        sub = argparse.Namespace(**vars(args))
        sub.fs = args.fs if rep == 1 else args.fs / 4
        table += bench_size(model, head, rep, sub)
    print("\n| atoms | method | inner steps | h-steps per CPU s | speed vs conservative | drift (meV/atom/ps) "
          "| T end (K) | conservative / direct calls |")
    print("|---:|---|---:|---:|---:|---:|---:|---|")
    for r in table:
        print(f"| {r['atoms']} | {r['method']} | {r['inner_steps']} | {r['speed']:.3f} | {r['ratio']:.2f}x | "
              f"{r['drift']:+.3g} | {r['t_end']:.0f} | {r['calls']['conservative']} / {r['calls']['direct']} |")
    for n in sorted({r["atoms"] for r in table}):
        rows = {r["method"]: r for r in table if r["atoms"] == n}
        c, m8 = rows["conservative"], rows["mts M=8"]
        ok_speed = m8["ratio"] >= 1.6
        ok_drift = abs(m8["drift"]) <= 2 * abs(c["drift"])
        print(f"{n} atoms: MTS M=8 speed {m8['ratio']:.2f}x (target >= 1.6x: {'met' if ok_speed else 'MISSED'}), "
              f"|drift| {abs(m8['drift']):.3g} vs conservative {abs(c['drift']):.3g} meV/atom/ps "
              f"(target <= 2x: {'met' if ok_drift else 'MISSED'})")


if __name__ == "__main__":
    main()
