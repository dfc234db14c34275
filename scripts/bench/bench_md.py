"""MD benchmark: conservative vs direct-force vs multiple time stepping (r-RESPA) on liquid water.

For each system size (192 atoms = tests/data/deepmd_water_64h2o, and its 2x2x2 replica with 1,536 atoms) it
runs, from the same initial velocities at 300 K, float64, NVE:

* ``conservative``: velocity Verlet at the inner step ``h`` with ``F = -dE/dr`` (the named baseline);
* ``direct``: velocity Verlet at ``h`` with the direct-force head only (energy logged with the conservative
  model every ``--log-direct`` steps, which adds ``1/log_direct`` of a conservative call per step);
* ``mts M=4``, ``mts M=8``: r-RESPA, inner step ``h`` with direct forces, outer step ``M h`` with the
  conservative correction.

Direct forces have their net force removed (``run_md(zero_net_direct=True)``, the default). Speed is simulated
time per CPU second, given as inner steps ``h`` per CPU second so the columns compare directly; the ratio is
against the conservative run. Drift is the slope of Etot in meV/atom/ps with its standard error from a line
fitted to ``--blocks`` block means (:func:`lam.md.drift.energy_drift_with_error`). At 192 atoms the
conservative and MTS M=8 runs last ``--fs`` fs, MTS M=4 ``--fs-short`` fs, direct ``--fs-direct`` fs; at 1,536 atoms
every run lasts ``--fs-big`` fs (speed only: too short for a drift). ``--fs`` is 600 fs by default because the
briefly trained bench model has a hole at short O-H distances: its conservative NVE run from data_0 at 300 K
stays at ~330 K with |dE| < 0.15 meV/atom for 760 fs, then an O-H pair collapses to ~0.5 Å (at ~780 fs) and
the box blows up (5000 K at 980 fs). The max T column shows such a failure. Targets: MTS M=8 >= 1.6x faster than
conservative, |drift| <= 2x the conservative |drift|.

The model: ``--model`` (any lam.hub source with a direct-force head), or a DPA-2 (``--preset``) with a
direct-force head built here: trained in float32 on the water frames of data_0..data_2 (``--train-steps``;
force RMSE against DFT reported on held-out frames of data_3), converted to float64, and its direct head
distilled onto its own conservative forces on frames of a 300 K conservative MD run of the trained model
(``--distill-fs`` fs from data_2 frame 0, other velocities than the benchmark's; RMS |F_NC - F_C| reported
on held-out frames of that run). The trained model is cached in ``--cache`` (reruns skip the training).

    python scripts/bench/bench_md.py [--model SRC --head NAME] [--sizes 1 2] [--fs 600] [--fs-short 250]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
WATER = REPO / "tests" / "data" / "deepmd_water_64h2o"
TRAIN_SYSTEMS = ("data_0", "data_1", "data_2")
HELDOUT_SYSTEM = "data_3"


def _force_errors(model, head: str, atoms_list, reference=None) -> dict[str, float]:
    """RMS of the conservative force, and RMS errors of F_C (vs ``reference``) and F_NC (vs F_C, with and
    without its net force) over ``atoms_list`` (eV/Å, per component)."""
    from lam.md.calculator import LAMCalculator

    calc = LAMCalculator(model, head=head, compress=False)
    sq = {"f_c": 0.0, "c_vs_ref": 0.0, "nc_vs_c": 0.0, "nc0_vs_c": 0.0, "e_vs_ref": 0.0}
    n = 0
    for k, atoms in enumerate(atoms_list):
        a = atoms.copy()
        calc.calculate(a, ["energy", "forces", "direct_forces"])
        fc, fnc = calc.results["forces"], calc.results["direct_forces"]
        sq["f_c"] += float(np.sum(fc**2))
        sq["nc_vs_c"] += float(np.sum((fnc - fc) ** 2))
        sq["nc0_vs_c"] += float(np.sum((fnc - fnc.mean(0) - fc) ** 2))
        if reference is not None:
            sq["c_vs_ref"] += float(np.sum((fc - reference[k].forces) ** 2))
            sq["e_vs_ref"] += ((calc.results["energy"] - float(reference[k].energy)) / len(a)) ** 2 * fc.size
        n += fc.size
    return {k: float(np.sqrt(v / n)) for k, v in sq.items()}


def oh_stretch_period(frames, dt_fs: float) -> float:
    """Period (fs) of the O-H stretch: first maximum of the autocorrelation of the O-H bond lengths in
    ``frames`` (consecutive MD frames ``dt_fs`` apart; each H paired with its nearest O in the first frame)."""
    first = frames[0]
    o_idx = np.flatnonzero(first.numbers == 8)
    h_idx = np.flatnonzero(first.numbers == 1)
    partner = [o_idx[np.argmin(first.get_distances(int(i), o_idx, mic=True))] for i in h_idx]
    r = np.array([[a.get_distance(int(i), int(o), mic=True) for i, o in zip(h_idx, partner)] for a in frames])
    r -= r.mean(0)
    n = len(r)
    acf = np.array([np.mean(r[: n - k] * r[k:]) for k in range(n // 2)])
    lag0 = int(np.ceil(2.0 / dt_fs))  # skip the first 2 fs (the decay from lag 0)
    peaks = [k for k in range(lag0, len(acf) - 1) if acf[k] >= acf[k - 1] and acf[k] >= acf[k + 1]]
    if not peaks:
        return float("nan")
    k = peaks[0]
    den = acf[k - 1] - 2 * acf[k] + acf[k + 1]  # parabolic refinement of the maximum
    shift = 0.5 * (acf[k - 1] - acf[k + 1]) / den if den != 0 else 0.0
    return float((k + shift) * dt_fs)


def prepare_model(args: argparse.Namespace):
    """Load ``--model`` or the cached bench model, or train one; returns (float64 model, head, info lines)."""
    from lam.checkpoint import export_model, read_metadata
    from lam.checkpoint import load as load_export

    if args.model:
        from lam.hub import load

        model = load(args.model)
        head = args.head or model.head_names[0]
        if model.direct_force_head is None:
            raise SystemExit(f"{args.model}: the model has no direct-force head")
        return model.double().to(args.device).eval(), head, [f"model: {args.model} (head {head})"]
    base = f"bb_{Path(args.backbone).name}" if args.backbone else f"{args.preset}-t{args.train_steps}-lr{args.lr:g}"
    name = (f"{base}-d{args.distill_steps}-md{args.distill_fs:g}"
            f"-n{args.distill_frames}-{args.head_kind}{args.head_hidden}x{args.head_vectors}"
            + (f"-c{args.consistency:g}" if args.consistency > 0 else "")
            + (f"-x{args.distill_copies}n{args.distill_noise:g}" if args.distill_copies and args.distill_noise else "")
            + (f"-b{args.head_basis}" if args.head_basis != 8 else "")
            + (f"-v{args.distill_variation:g}-lag{_frozen_lag(args)}" if args.head_kind == "energy" else ""))
    cache = Path(args.cache or Path(tempfile.gettempdir()) / "lam_bench_md" / name)
    if (cache / "metadata.json").is_file():
        info = list(read_metadata(cache).get("bench_md", []))
        print(f"cached bench model {cache}", flush=True)
        return load_export(cache).double().to(args.device).eval(), "water", info
    model, info = train_model(args)
    export_model(model.cpu(), cache, extra={"bench_md": info})
    print(f"bench model cached in {cache}", flush=True)
    return model.to(args.device), "water", info


def train_model(args: argparse.Namespace):
    """DPA-2 with a direct-force head: float32 training on water, float64 distillation of the direct head."""
    from lam import build_model
    from lam.data.formats import read_any
    from lam.data.graph import frame_to_atoms
    from lam.md.hybrid import distill_direct_head, distill_frozen_head, quick_fit
    from lam.md.run import load_structure, run_md

    info: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        info.append(line)

    head_kwargs = {"rcut": 4.0, "hidden": args.head_hidden, "num_basis": args.head_basis, "kind": args.head_kind,
                   "vectors": args.head_vectors}
    heldout = list(read_any(WATER / HELDOUT_SYSTEM))[::5]
    if args.backbone:  # a trained bench model with a fresh direct head (only the head is fitted below)
        from lam.hub import load
        from lam.models.direct_force import DirectForceHead

        model = load(args.backbone).double()
        model.direct_force_head = DirectForceHead(model.descriptor.dim_out, **head_kwargs).double()
        model = model.to(args.device)
        say(f"backbone {args.backbone} with a fresh {args.head_kind} direct head ({args.head_hidden} hidden, "
            f"{args.head_vectors} vectors, {args.head_basis} radial functions); no backbone training")
    else:
        model = build_model(args.preset, type_map=["O", "H"], heads=["water"], dtype="float32", seed=0,
                            direct_force=head_kwargs).to(args.device)
        train = [f for name in TRAIN_SYSTEMS for f in read_any(WATER / name)]
        t0 = _clock(args)
        losses = (quick_fit(model, train, args.train_steps, lr=args.lr, direct_consistency=args.consistency)
                  if args.train_steps else [])
        say(f"trained {args.preset} (float32) {args.train_steps} steps, batch 1, on {len(train)} frames of "
            f"{', '.join(TRAIN_SYSTEMS)} in {_clock(args) - t0:.0f} {_unit(args)}"
            + (f"; loss {np.mean(losses[:10]):.3g} -> {np.mean(losses[-50:]):.3g}" if losses else "")
            + (f"; direct_consistency term {args.consistency:g}" if args.consistency > 0 else ""))
    model = model.double().eval()
    held_atoms = [frame_to_atoms(f) for f in heldout]
    ref_rms = float(np.sqrt(np.mean(np.concatenate([f.forces.ravel() ** 2 for f in heldout]))))
    err = _force_errors(model, "water", held_atoms, heldout)
    say(f"held-out ({len(heldout)} frames of {HELDOUT_SYSTEM}): force RMSE vs DFT {err['c_vs_ref'] * 1000:.0f} "
        f"meV/Å (DFT force RMS {ref_rms * 1000:.0f} meV/Å), energy RMSE {err['e_vs_ref'] * 1000:.1f} meV/atom")
    # configurations the trained model visits: conservative NVE at 300 K (other start and velocities)
    steps = int(round(args.distill_fs / args.h))
    every = max(1, steps // args.distill_frames)
    t0 = _clock(args)
    with tempfile.TemporaryDirectory() as tmp:
        r = run_md(model, load_structure(WATER / "data_2", index=0), ensemble="nve", dt=args.h, steps=steps,
                   temperature=300.0, seed=12345, log_every=1, output_dir=tmp, progress=False)
        from ase.io import read

        trajectory = read(str(Path(tmp) / "md.traj"), index=":")
    frames = trajectory[every::every]
    say(f"distillation data: {len(frames)} frames of a {args.distill_fs:g} fs conservative NVE run (300 K "
        f"start, mean T {r.temperature_k.mean():.0f} K) in {_clock(args) - t0:.0f} {_unit(args)}")
    period = oh_stretch_period(trajectory, args.h)
    say(f"O-H stretch period of the trained model (bond-length autocorrelation, same run): {period:.1f} fs; "
        f"MTS outer steps 4 h = {4 * args.h:g} fs, 8 h = {8 * args.h:g} fs (r-RESPA resonances at T/2 = "
        f"{period / 2:.1f} fs, T/3 = {period / 3:.1f} fs)")
    fit, check = frames[0::2], frames[1::2]
    before = _force_errors(model, "water", check)
    t0 = _clock(args)
    if args.head_kind == "energy":  # fitted as the frozen-feature inner force: anchor features, later geometry
        lag = _frozen_lag(args)
        gap = distill_frozen_head(model, trajectory, args.distill_steps, lag=lag, lr=args.distill_lr,
                                  stride=max(1, len(trajectory) // args.distill_frames),
                                  variation=args.distill_variation)
        say(f"frozen-feature fit ({args.distill_steps} head-only steps, anchors every "
            f"{max(1, len(trajectory) // args.distill_frames)} frames, lags 0-{lag} frames): RMS |F_NC - F_C| "
            + ", ".join(f"{k} {v * 1000:.0f}" for k, v in gap.items()) + " meV/Å")
    else:
        distill_direct_head(model, fit, args.distill_steps, lr=args.distill_lr, noise=args.distill_noise,
                            copies=args.distill_copies)
    after = _force_errors(model, "water", check)
    extra = (f" + {args.distill_copies} copies each displaced by {args.distill_noise:g} Å"
             if args.distill_copies and args.distill_noise else "")
    fitted_on = (f"frozen-feature pairs of {len(trajectory)} frames" if args.head_kind == "energy"
                 else f"{len(fit)} frames{extra}")
    say(f"direct head distilled onto -dE/dr ({args.distill_steps} head-only steps on {fitted_on}, "
        f"{_clock(args) - t0:.0f} {_unit(args)}); on {len(check)} held-out frames of the run: RMS |F_C| = "
        f"{after['f_c'] * 1000:.0f} meV/Å, RMS |F_NC - F_C| = {before['nc_vs_c'] * 1000:.0f} -> "
        f"{after['nc_vs_c'] * 1000:.0f} meV/Å ({after['nc0_vs_c'] * 1000:.0f} meV/Å with the net force removed)")
    err = _force_errors(model, "water", held_atoms, heldout)
    say(f"held-out DFT frames after distillation: RMS |F_NC - F_C| = {err['nc_vs_c'] * 1000:.0f} meV/Å")
    return model, info


def bench_size(model, head: str, rep: int, args: argparse.Namespace) -> list[dict]:
    """The four runs on the water box replicated ``rep`` times per axis."""
    from lam.md.drift import energy_drift_with_error
    from lam.md.run import load_structure, run_md

    atoms = load_structure(WATER / "data_0").repeat(rep)
    h = args.h

    def n_inner_steps(fs: float) -> int:
        return max(8, int(round(fs / h / 8)) * 8)

    long_, short, direct = (args.fs, args.fs_short, args.fs_direct) if rep == 1 else (args.fs_big,) * 3
    runs = [("conservative", n_inner_steps(long_), 1, dict(ensemble="nve", dt=h, log_every=8))]
    if not args.skip_direct:
        runs += [("direct", n_inner_steps(direct), 1, dict(ensemble="nve", dt=h, log_every=args.log_direct,
                                                          direct=True)),
                 ("mts M=4", n_inner_steps(short), 4, dict(ensemble="mts", dt=4 * h, n_inner=4, log_every=2)),
                 ("mts M=8", n_inner_steps(long_), 8, dict(ensemble="mts", dt=8 * h, n_inner=8, log_every=1))]
    if args.direct_dtype and not args.skip_direct:  # the same MTS runs with the inner (direct) force in lower precision
        runs += [(f"mts M={m} {args.direct_dtype} inner", n_inner_steps(long_ if m == 8 else short), m,
                  dict(ensemble="mts", dt=m * h, n_inner=m, log_every=8 // m, direct_dtype=args.direct_dtype))
                 for m in (4, 8)]
    if args.coarse_baseline:  # conservative Verlet at twice the step: what any MTS must beat per simulated fs
        runs.append(("conservative, dt 2h", n_inner_steps(long_), 1,
                     dict(ensemble="nve", dt=2 * h, log_every=4, steps=n_inner_steps(long_) // 2)))
    if getattr(model.direct_force_head, "kind", None) == "energy":  # frozen-feature MTS (inner="frozen")
        for m, hf, every_fs in _frozen_runs(args):
            outer_steps = max(1, int(round(long_ / (m * hf))))
            refresh = max(1, int(round(every_fs / (m * hf)))) if every_fs > 0 else outer_steps + 1
            what = f"refresh {every_fs:g} fs" if every_fs > 0 else "never refreshed"
            runs.append((f"mts M={m} frozen, h {hf:g} fs, {what}", int(round(outer_steps * m * hf / h)), m,
                         dict(ensemble="mts", inner="frozen", dt=m * hf, n_inner=m, refresh_every=refresh,
                              log_every=max(1, int(round(h * 8 / (m * hf)))), steps=outer_steps)))
    rows = []
    for name, inner_steps, m, kw in runs:
        t0 = _clock(args)
        kw = dict(kw)
        steps = kw.pop("steps", inner_steps // m)
        r = run_md(model, atoms, head=head, temperature=300.0, seed=0, progress=False, steps=steps,
                   device=args.device, **kw)
        cpu = _clock(args) - t0
        if len(r.times_fs) >= 3 * args.blocks:
            drift, err = energy_drift_with_error(r.times_fs, r.conserved_ev, len(atoms), args.blocks)
        else:
            drift, err = r.drift_mev_atom_ps, float("nan")
        rows.append({"atoms": len(atoms), "method": name, "inner_steps": inner_steps, "fs": inner_steps * h,
                     "cpu_s": cpu, "speed": inner_steps / cpu, "drift": drift, "err": err,
                     "t_mean": float(np.mean(r.temperature_k)),
                     "t_max": float(np.max(r.temperature_k)), "calls": r.force_calls,
                     "p_net": float(np.linalg.norm(r.atoms.get_momenta().sum(0)))})
        print(f"  {len(atoms)} atoms {name:13s} {inner_steps * h:6.0f} fs "
              f"{inner_steps / cpu:7.3f} h-steps/{_unit(args)} "
              f"drift {drift:+.3g} ± {err:.2g} meV/atom/ps  "
              f"mean/max T {rows[-1]['t_mean']:.0f}/{rows[-1]['t_max']:.0f} K  "
              f"{r.force_calls}",
              flush=True)
    base = rows[0]
    for row in rows:
        row["ratio"] = row["speed"] / base["speed"]
    return rows


def _clock(args: argparse.Namespace) -> float:
    """CPU seconds of this process on the CPU; wall seconds (after a synchronize) on an accelerator."""
    if torch.device(args.device).type == "cpu":
        return time.process_time()
    if torch.device(args.device).type == "cuda":
        torch.cuda.synchronize(args.device)
    return time.perf_counter()


def _unit(args: argparse.Namespace) -> str:
    return "CPU s" if torch.device(args.device).type == "cpu" else "wall s"


def _frozen_runs(args: argparse.Namespace) -> list[tuple[int, float, float]]:
    """``--frozen-runs "M:h[:refresh_fs],..."`` as (inner steps per outer step, inner step in fs, fs between
    refreshes of the frozen features; ``--refresh-fs`` when not given, 0 for never) triples."""
    runs = []
    for spec in args.frozen_runs.split(","):
        parts = spec.split(":")
        runs.append((int(parts[0]), float(parts[1]), float(parts[2]) if len(parts) > 2 else args.refresh_fs))
    return runs


def _frozen_lag(args: argparse.Namespace) -> int:
    """Frames (``h`` apart) per outer step of the longest frozen-feature run: the lag of the head's fit."""
    return max(1, max(int(round(m * hf / args.h)) for m, hf, _ in _frozen_runs(args)))


def verdicts(table: list[dict]) -> list[str]:
    """PASS/FAIL lines for the two targets, for every MTS M=8 variant, per system size."""
    lines = []
    for n in sorted({r["atoms"] for r in table}):
        rows = {r["method"]: r for r in table if r["atoms"] == n}
        c = rows["conservative"]
        for name, m8 in rows.items():
            if not (name.startswith("mts M=8") or "frozen" in name):
                continue
            lines.append(f"{n} atoms, {name}: speed target (>= 1.6x conservative): "
                         f"{'PASS' if m8['ratio'] >= 1.6 else 'FAIL'} ({m8['ratio']:.2f}x)")
            if not np.isfinite(c["err"]) or not np.isfinite(m8["err"]):
                lines.append(f"{n} atoms, {name}: drift target: not measured (runs of {c['fs']:.0f} / "
                             f"{m8['fs']:.0f} fs are too short for a drift with an error bar; speed only)")
                continue
            dc, sc, dm, sm = abs(c["drift"]), c["err"], abs(m8["drift"]), m8["err"]
            lines.append(f"{n} atoms, {name}: drift target (|drift| <= 2x |drift conservative|): "
                         f"{'PASS' if dm <= 2 * dc else 'FAIL'} on the point estimates ({dm:.2g} ± {sm:.2g} vs "
                         f"2 x {dc:.2g} ± {sc:.2g} meV/atom/ps); with the error bars (|drift| + 2 SE <= 2 x "
                         f"(|drift conservative| + 2 SE)): {'PASS' if dm + 2 * sm <= 2 * (dc + 2 * sc) else 'FAIL'}"
                         f"; the 0.1 meV/atom/ps stability bar: "
                         f"{'PASS' if dm + 2 * sm <= 0.1 else 'FAIL'} (upper bound {dm + 2 * sm:.2g})")
        if np.isfinite(c["err"]):
            resolved = "resolved" if abs(c["drift"]) > 2 * c["err"] else "NOT resolved"
            lines.append(f"{n} atoms: conservative drift {resolved}"
                         f" (2-SE upper bound {abs(c['drift']) + 2 * c['err']:.2g} meV/atom/ps)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="lam.hub source of a model with a direct-force head")
    parser.add_argument("--head", help="head of --model (default: its first)")
    parser.add_argument("--preset", default="small", help="DPA-2 preset built when --model is not given")
    parser.add_argument("--backbone", help="lam.hub source of a trained model: keep it, give it a fresh direct head "
                        "(--head-*) and fit only that (instead of training a --preset)")
    parser.add_argument("--skip-direct", action="store_true",
                        help="skip the direct-only and direct-inner MTS runs (frozen-feature studies)")
    parser.add_argument("--train-steps", type=int, default=1500, help="float32 training steps on water")
    parser.add_argument("--lr", type=float, default=1e-2, help="training learning rate (decays to lr/10)")
    parser.add_argument("--distill-fs", type=float, default=400.0, help="MD run sampled for the distillation")
    parser.add_argument("--distill-steps", type=int, default=5000, help="direct-head distillation steps")
    parser.add_argument("--distill-lr", type=float, default=3e-3)
    parser.add_argument("--distill-frames", type=int, default=200,
                        help="frames taken from the --distill-fs run (half fit the head, half check it)")
    parser.add_argument("--consistency", type=float, default=0.0,
                        help="prefactor of the direct_consistency loss term (direct vs -dE/dr) in the training")
    parser.add_argument("--distill-noise", type=float, default=0.0,
                        help="Gaussian displacement (Å) of the extra distillation copies (--distill-copies)")
    parser.add_argument("--distill-copies", type=int, default=0, help="displaced copies per distillation frame")
    parser.add_argument("--head-kind", default="edge", choices=["edge", "pair", "energy"],
                        help="direct-force readout (energy: also the frozen-feature MTS runs)")
    parser.add_argument("--frozen-runs", default="2:0.5,4:0.5,8:0.125",
                        help="frozen-feature MTS runs (--head-kind energy) as M:inner-step-fs[:refresh-fs] "
                             "(refresh 0: never; default --refresh-fs)")
    parser.add_argument("--coarse-baseline", action="store_true",
                        help="also run conservative Verlet at 2h (the baseline for MTS with outer steps of 2h)")
    parser.add_argument("--refresh-fs", type=float, default=50.0,
                        help="frozen-feature MTS: simulated fs between refreshes of the frozen features")
    parser.add_argument("--head-hidden", type=int, default=32, help="direct-force head width")
    parser.add_argument("--head-vectors", type=int, default=8, help="vector channels of the edge head")
    parser.add_argument("--head-basis", type=int, default=8, help="radial basis functions of the direct head")
    parser.add_argument("--distill-variation", type=float, default=0.0,
                        help="--head-kind energy: weight of the change of the error over an outer step")
    parser.add_argument("--direct-dtype", default="float32",
                        help="also run MTS with the inner force in this dtype ('' to skip those rows)")
    parser.add_argument("--cache", help="bench model directory (default: $TMPDIR/lam_bench_md/<settings>)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2], help="replications per axis")
    parser.add_argument("--h", type=float, default=0.5, help="inner time step (fs)")
    parser.add_argument("--fs", type=float, default=600.0, help="192 atoms: conservative and MTS M=8 (fs)")
    parser.add_argument("--fs-short", type=float, default=250.0, help="192 atoms: MTS M=4 (fs)")
    parser.add_argument("--fs-direct", type=float, default=100.0, help="192 atoms: direct forces only (fs)")
    parser.add_argument("--fs-big", type=float, default=12.0, help="1,536 atoms: every run (fs)")
    parser.add_argument("--blocks", type=int, default=10, help="blocks for the drift's standard error")
    parser.add_argument("--log-direct", type=int, default=16, help="energy-log interval of the direct run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="torch device of the training and the MD runs (cuda, ...)")
    parser.add_argument("--json", help="also write the info lines and the table to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, head, info = prepare_model(args)
    table = []
    for rep in args.sizes:
        table += bench_size(model, head, rep, args)
    print()
    for line in info:
        print(line)
    print(f"\n| atoms | method | simulated fs | h-steps per {_unit(args)} | speed vs conservative "
          "| drift ± SE (meV/atom/ps) | mean / max T (K) | conservative / direct calls |")
    print("|---:|---|---:|---:|---:|---:|---:|---|")
    for r in table:
        print(f"| {r['atoms']} | {r['method']} | {r['fs']:.0f} | {r['speed']:.3f} | {r['ratio']:.2f}x | "
              f"{r['drift']:+.2g} ± {r['err']:.2g} | {r['t_mean']:.0f} / {r['t_max']:.0f} | "
              f"{r['calls']['conservative']} / {r['calls']['direct']} |")
    print()
    for line in verdicts(table):
        print(line)
    if args.json:
        import json

        Path(args.json).write_text(json.dumps({"device": args.device, "info": info, "table": table,
                                               "verdicts": verdicts(table)}, indent=1, default=str))


if __name__ == "__main__":
    main()
