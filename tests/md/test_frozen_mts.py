"""Frozen-feature multiple time stepping: the ``kind="energy"`` direct head and ``run_md(inner="frozen")``.

* The energy head's forces are minus the gradient of its local energy at fixed descriptor features (autograd
  and finite differences), rotate with the structure and sum to zero; at fixed features its force field has
  a symmetric Jacobian, the edge head's does not.
* The calculator's frozen direct forces are the head on the features of the last full evaluation: equal to
  the direct forces where those features were computed, different elsewhere.
* r-RESPA with a refreshed fast force: one refresh per outer step; with one inner step the frozen scheme
  is velocity Verlet with ``-dE/dr`` whatever the head predicts.
* ``distill_frozen_head`` fits the head to ``-dE/dr`` along a trajectory, at lag 0 and across an outer step.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet

from lam import build_model
from lam.data.neighbors import neighbor_list
from lam.md.calculator import LAMCalculator
from lam.md.drift import jacobian_asymmetry
from lam.md.integrators import MultipleTimeStepVerlet, calculator_forces
from lam.md.run import init_velocities, load_structure, run_md
from lam.models import Potential
from lam.models.direct_force import DirectForceHead


def energy_student(seed: int = 0) -> Potential:
    """A compact se_e2_a student with a ``kind="energy"`` direct head, float64."""
    return build_model("student", type_map=["O", "H"], heads=["water"], dtype="float64", seed=seed,
                       neurons=[8, 16, 32], axis_neuron=4, sel=48, rcut=4.0, rcut_smth=0.5, fitting_neurons=[32, 32],
                       direct_force={"rcut": 3.5, "hidden": 16, "num_basis": 4, "kind": "energy", "vectors": 4})


@pytest.fixture(scope="module")
def water(water_dir: Path) -> Atoms:
    return load_structure(water_dir / "data_0", index=0)


def _cluster(n: int = 14, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cell = np.eye(3) * 6.0
    pos = rng.uniform(0.0, 6.0, (n, 3))
    return pos, cell


def _edges(pos: np.ndarray, cell: np.ndarray, cutoff: float) -> tuple[torch.Tensor, torch.Tensor]:
    nl = neighbor_list(pos, cell, np.array([True, True, True]), cutoff)
    return torch.as_tensor(nl.edge_index), torch.as_tensor(nl.shifts, dtype=torch.float64) @ torch.as_tensor(cell)


def _head_forces(head: DirectForceHead, feats: torch.Tensor, cell: np.ndarray, edges: torch.Tensor,
                 shift: torch.Tensor):
    def fn(pos: np.ndarray) -> np.ndarray:
        p = torch.as_tensor(pos, dtype=torch.float64)
        vec = p[edges[1]] - p[edges[0]] + shift
        return head(feats, edges, vec).detach().numpy()

    return fn


def test_energy_head_forces_are_minus_the_gradient_of_its_energy_at_fixed_features() -> None:
    torch.manual_seed(0)
    head = DirectForceHead(12, rcut=3.5, hidden=16, num_basis=4, kind="energy", vectors=4).double().eval()
    assert head.is_gradient
    pos, cell = _cluster()
    edges, shift = _edges(pos, cell, 3.5)  # fixed edge set: the displacements below cross no cutoff
    feats = torch.randn(len(pos), 12, dtype=torch.float64)
    p = torch.as_tensor(pos).requires_grad_(True)
    energy = head.local_energy(feats, edges, p[edges[1]] - p[edges[0]] + shift)
    (grad,) = torch.autograd.grad(energy, p)
    forces = _head_forces(head, feats, cell, edges, shift)(pos)
    np.testing.assert_allclose(forces, -grad.numpy(), atol=1e-12)
    assert np.abs(forces).max() > 1e-3  # not trivially zero
    np.testing.assert_allclose(forces.sum(0), 0.0, atol=1e-12)  # Newton's third law

    def energy_at(x: np.ndarray) -> float:
        q = torch.as_tensor(x)
        with torch.no_grad():
            return float(head.local_energy(feats, edges, q[edges[1]] - q[edges[0]] + shift))

    eps = 1e-5
    for atom, axis in [(0, 0), (3, 2), (7, 1)]:
        plus, minus = pos.copy(), pos.copy()
        plus[atom, axis] += eps
        minus[atom, axis] -= eps
        fd = -(energy_at(plus) - energy_at(minus)) / (2 * eps)
        assert abs(fd - forces[atom, axis]) < 1e-7 * max(1.0, abs(fd))
    # equivariance: rotating the structure (features are invariants, held fixed) rotates the forces
    rot = torch.linalg.matrix_exp(torch.tensor([[0.0, -0.4, 0.3], [0.4, 0.0, -0.7], [-0.3, 0.7, 0.0]],
                                               dtype=torch.float64)).numpy()
    vec = torch.as_tensor(pos)[edges[1]] - torch.as_tensor(pos)[edges[0]] + shift
    rotated = head(feats, edges, vec @ torch.as_tensor(rot).T).detach().numpy()
    np.testing.assert_allclose(rotated, forces @ rot.T, atol=1e-12)


def test_energy_head_trains_through_its_forces() -> None:
    torch.manual_seed(1)
    head = DirectForceHead(8, rcut=3.5, hidden=8, num_basis=4, kind="energy", vectors=2).double().train()
    pos, cell = _cluster(10, seed=2)
    edges, shift = _edges(pos, cell, 3.5)
    feats = torch.randn(len(pos), 8, dtype=torch.float64, requires_grad=True)
    p = torch.as_tensor(pos)
    forces = head(feats, edges, p[edges[1]] - p[edges[0]] + shift)
    forces.square().sum().backward()
    assert feats.grad is not None and feats.grad.abs().max() > 0  # reaches the descriptor
    for layer in (head.centre, head.radial, head.pair_energy, head.vector_weights, head.gram_in, head.atom_in):
        assert layer.weight.grad is not None and layer.weight.grad.abs().max() > 0  # (constant biases: none)
    with pytest.raises(ValueError, match="kind='energy'"):
        DirectForceHead(8, kind="edge").local_energy(feats, edges, p[edges[1]] - p[edges[0]] + shift)


def test_frozen_energy_head_is_a_gradient_field_the_edge_head_is_not() -> None:
    torch.manual_seed(2)
    pos, cell = _cluster(8, seed=5)
    edges, shift = _edges(pos, cell, 3.5)
    feats = torch.randn(len(pos), 12, dtype=torch.float64)
    lam = {}
    for kind in ("energy", "edge"):
        head = DirectForceHead(12, rcut=3.5, hidden=16, num_basis=4, kind=kind, vectors=4).double().eval()
        lam[kind] = jacobian_asymmetry(_head_forces(head, feats, cell, edges, shift), pos, eps=1e-5)
    assert lam["energy"] < 1e-7 and lam["edge"] > 1e-3, lam  # ~1e-10 vs ~6e-3


def test_frozen_direct_forces_are_the_head_on_the_last_full_evaluations_features(water: Atoms) -> None:
    model = energy_student()
    calc = LAMCalculator(model, head="water", compress=False)
    with pytest.raises(RuntimeError, match="earlier full evaluation"):
        calc.frozen_direct_forces(water.copy())
    a = water.copy()
    calc.calculate(a, ["energy", "forces", "direct_forces"])
    direct = calc.results["direct_forces"]
    np.testing.assert_allclose(calc.frozen_direct_forces(a), direct, atol=1e-12)
    moved = a.copy()
    moved.positions += np.random.default_rng(0).normal(0.0, 0.05, moved.positions.shape)
    frozen = calc.frozen_direct_forces(moved)  # features of ``a``, geometry of ``moved``
    fresh = LAMCalculator(model, head="water", compress=False)
    fresh.calculate(moved, ["direct_forces"])
    assert not np.allclose(frozen, direct) and not np.allclose(frozen, fresh.results["direct_forces"])
    calc.calculate(moved, ["energy", "forces"])  # a full evaluation refreshes the features
    np.testing.assert_allclose(calc.frozen_direct_forces(moved), fresh.results["direct_forces"], atol=1e-12)


def test_refreshed_fast_force_once_per_outer_step_and_verlet_with_equal_forces() -> None:
    def copper() -> Atoms:
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
        thermalize_momenta(atoms, temperature_K=600, rng=np.random.default_rng(0))
        atoms.calc = EMT()
        return atoms

    a, b = copper(), copper()
    calc = EMT()
    mts = MultipleTimeStepVerlet(a, 4 * units.fs, 4, fast_forces=calculator_forces(calc),
                                 slow_forces=calculator_forces(calc), refresh_fast=calculator_forces(calc))
    mts.run(5)
    assert mts.slow_calls == 5 + 1 and mts.refresh.calls == 5 and mts.fast_calls == 5 * 4 + 5
    VelocityVerlet(b, units.fs).run(20)
    np.testing.assert_allclose(a.positions, b.positions, atol=1e-10)
    np.testing.assert_allclose(a.get_momenta(), b.get_momenta(), atol=1e-10)
    c = copper()
    every3 = MultipleTimeStepVerlet(c, 4 * units.fs, 4, fast_forces=calculator_forces(calc),
                                    slow_forces=calculator_forces(calc), refresh_fast=calculator_forces(calc),
                                    refresh_every=3)
    every3.run(7)  # refreshed at outer steps 0, 3 and 6
    assert every3.refresh.calls == 3 and every3.fast_calls == 7 * 4 + 3 and every3.slow_calls == 8
    d = copper()
    VelocityVerlet(d, units.fs).run(28)
    np.testing.assert_allclose(c.positions, d.positions, atol=1e-10)  # with equal forces still Verlet at dt/M
    with pytest.raises(ValueError, match="refresh_every"):
        MultipleTimeStepVerlet(c, units.fs, 2, calculator_forces(calc), calculator_forces(calc), refresh_every=0)


def test_frozen_mts_with_one_inner_step_is_conservative_verlet(water: Atoms) -> None:
    """M = 1: the fast force enters the step as +h/2 and -dt/2 kicks at the same positions and features, so
    the frozen scheme is velocity Verlet with ``-dE/dr`` for any head; M = 4 uses one conservative pass and
    five head calls per outer step."""
    model = energy_student(seed=3)
    nve = run_md(model, water, ensemble="nve", dt=0.5, steps=8, seed=0, progress=False)
    mts = run_md(model, water, ensemble="mts", inner="frozen", n_inner=1, dt=0.5, steps=8, seed=0,
                 progress=False)
    np.testing.assert_allclose(mts.atoms.positions, nve.atoms.positions, atol=1e-9)
    np.testing.assert_allclose(mts.etot_ev, nve.etot_ev, atol=1e-9)
    r = run_md(model, water, ensemble="mts", inner="frozen", n_inner=4, dt=2.0, steps=3, seed=0, progress=False,
               refresh_every=1)
    assert r.force_calls == {"conservative": 4, "direct": 3 * 4 + 3} and r.model_passes == 4
    assert np.all(np.isfinite(r.etot_ev))
    rare = run_md(model, water, ensemble="mts", inner="frozen", n_inner=4, dt=2.0, steps=5, seed=0, progress=False,
                  refresh_every=2)  # features frozen at outer steps 0, 2 and 4
    assert rare.force_calls == {"conservative": 6, "direct": 5 * 4 + 3}
    default = run_md(model, water, ensemble="mts", inner="frozen", n_inner=4, dt=2.0, steps=5, seed=0,
                     progress=False)  # refresh_every=25: frozen once for these 5 outer steps
    assert default.force_calls == {"conservative": 6, "direct": 5 * 4 + 1}
    with pytest.raises(ValueError, match="inner must be one of"):
        run_md(model, water, ensemble="mts", inner="cached", steps=1, progress=False)


def test_distill_frozen_head_fits_minus_dE_dr_across_an_outer_step(water: Atoms) -> None:
    from lam.md.hybrid import distill_frozen_head

    model = energy_student(seed=5)
    frames: list[Atoms] = []  # consecutive frames of a short conservative run
    atoms = water.copy()
    init_velocities(atoms, 300.0, seed=1)
    atoms.calc = LAMCalculator(model, head="water", compress=False)
    dyn = VelocityVerlet(atoms, 0.5 * units.fs)
    dyn.attach(lambda: frames.append(atoms.copy()), interval=1)
    dyn.run(10)
    before = distill_frozen_head(model, frames, steps=0, lag=4)
    after = distill_frozen_head(model, frames, steps=150, lag=4, lr=1e-2)
    assert set(after) == {"lag0", "lag4", "change"}
    assert after["lag0"] < 0.7 * before["lag0"] and after["lag4"] < 0.7 * before["lag4"], (before, after)
    with pytest.raises(ValueError, match="more than lag"):
        distill_frozen_head(model, frames[:3], steps=1, lag=4)


def test_cli_frozen_mts_with_an_exported_energy_head(tmp_path: Path, water_dir: Path) -> None:
    """The energy head survives export/load, and ``python -m lam.md ... inner=frozen refresh_every=2`` runs."""
    import subprocess
    import sys

    from lam.checkpoint import export_model
    from lam.hub import load

    model = energy_student(seed=6)
    export = export_model(model, tmp_path / "export")
    loaded = load(str(export))
    assert loaded.direct_force_head.kind == "energy" and loaded.direct_force_head.vectors == 4
    atoms = load_structure(water_dir / "data_0")
    a, b = LAMCalculator(model, compress=False), LAMCalculator(loaded, compress=False)
    a.calculate(atoms.copy(), ["energy", "forces", "direct_forces"])
    b.calculate(atoms.copy(), ["energy", "forces", "direct_forces"])
    np.testing.assert_allclose(b.results["direct_forces"], a.results["direct_forces"], atol=1e-12)
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "lam.md", f"model={export}", "head=water", f"structure={water_dir / 'data_0'}",
         "ensemble=mts", "inner=frozen", "refresh_every=2", "dt=1.0", "n_inner=4", "steps=4", "log_every=2",
         f"output_dir={out}", "progress=false"],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mts (M=4" in proc.stdout and "'direct': 18" in proc.stdout  # 4 x 4 inner + 2 refreshes
    assert (out / "md.csv").is_file()
