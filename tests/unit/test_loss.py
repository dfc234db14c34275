"""Loss terms, prefactor schedule, label masking, per-frame weights and per-head metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lam.data import keys as K
from lam.data.frame import Frame
from lam.data.graph import AtomicGraph, collate
from lam.train.loss import HeadMetrics, LossTerm, PotentialLoss
from lam.train.optim import LRSchedule

RNG = np.random.default_rng(7)


def _frame(n: int, energy: bool = True, forces: bool = True, virial: bool = False) -> Frame:
    pos = RNG.uniform(0, 3, size=(n, 3))
    return Frame(numbers=np.ones(n, dtype=int), positions=pos, cell=np.eye(3) * 6.0, pbc=True,
                 energy=float(RNG.normal()) if energy else None,
                 forces=RNG.normal(size=(n, 3)) if forces else None,
                 virial=RNG.normal(size=(3, 3)) if virial else None)


def _batch(frames: list[Frame], heads: list[int], weights: list[float] | None = None):
    weights = weights or [1.0] * len(frames)
    return collate([AtomicGraph.from_frame(f, 2.0, head=h, weight=w) for f, h, w in zip(frames, heads, weights)])


def _pred(batch, shift_e: float = 0.0, shift_f: float = 0.0, shift_w: float = 0.0) -> dict[str, torch.Tensor]:
    return {K.ENERGY: (batch[K.ENERGY] + shift_e).clone().requires_grad_(True),
            K.FORCES: (batch[K.FORCES] + shift_f).clone().requires_grad_(True),
            K.VIRIAL: (batch[K.VIRIAL] + shift_w).clone().requires_grad_(True)}


def test_prefactor_follows_learning_rate_ratio():
    term = LossTerm(start_pref=1000.0, limit_pref=1.0)
    assert term.prefactor(1.0) == 1000.0
    assert term.prefactor(0.0) == 1.0
    assert term.prefactor(0.5) == pytest.approx(500.5)
    loss = PotentialLoss.default()
    assert loss.terms["energy"].start_pref == 0.02 and loss.terms["energy"].limit_pref == 1.0
    assert loss.terms["forces"].start_pref == 1000.0 and loss.terms["virial"].start_pref == 0.02
    assert "direct_forces" not in loss.terms


def test_prefactors_track_the_decay_schedule_not_the_warmup():
    sched = LRSchedule("exponential", total_steps=1000, warmup_steps=10, stop_lr_ratio=1e-3, decay_steps=10)
    assert sched(0) == pytest.approx(0.1)  # warmup ramps the learning rate ...
    assert sched.decay_factor(0) == 1.0  # ... but the prefactors start at their start values
    assert sched.decay_factor(1000) == pytest.approx(1e-3, rel=1e-6)
    term = LossTerm(1000.0, 1.0)
    assert term.prefactor(sched.decay_factor(1000)) == pytest.approx(1.0 + 999.0 * 1e-3)
    cos = LRSchedule("cosine", total_steps=100, stop_lr_ratio=0.1)
    assert cos.decay_factor(0) == 1.0 and cos.decay_factor(100) == pytest.approx(0.1)
    assert cos.decay_factor(50) == pytest.approx(0.55)


def test_energy_per_atom_mse_with_frame_weights():
    frames = [_frame(2), _frame(5)]
    batch = _batch(frames, [0, 0], weights=[1.0, 3.0])
    pred = _pred(batch)
    with torch.no_grad():
        pred[K.ENERGY] += torch.tensor([0.2, 1.0], dtype=torch.float64)
    loss = PotentialLoss(energy={"start_pref": 1.0, "limit_pref": 1.0})
    total, parts = loss(pred, batch, lr_ratio=1.0)
    expected = (1.0 * (0.2 / 2) ** 2 + 3.0 * (1.0 / 5) ** 2) / 4.0
    assert float(total.detach()) == pytest.approx(expected, rel=1e-10)
    assert float(parts["loss/energy"]) == pytest.approx(expected, rel=1e-10)


def test_missing_labels_are_masked_not_filled():
    frames = [_frame(3), _frame(4, energy=False, forces=False)]
    batch = _batch(frames, [0, 1])
    pred = _pred(batch)
    with torch.no_grad():  # huge errors on the unlabelled frame must not matter
        pred[K.ENERGY][1] += 1e6
        pred[K.FORCES][3:] += 1e6
        pred[K.ENERGY][0] += 0.3
        pred[K.FORCES][:3] += 0.1
    loss = PotentialLoss(energy={"start_pref": 1.0, "limit_pref": 1.0}, forces={"start_pref": 2.0, "limit_pref": 2.0})
    total, parts = loss(pred, batch)
    assert float(parts["loss/energy"]) == pytest.approx((0.3 / 3) ** 2)
    assert float(parts["loss/forces"]) == pytest.approx(0.01)
    assert float(total.detach()) == pytest.approx((0.3 / 3) ** 2 + 2 * 0.01)
    total.backward()
    assert float(pred[K.ENERGY].grad[1]) == 0.0
    assert torch.all(pred[K.FORCES].grad[3:] == 0.0)
    assert torch.all(pred[K.FORCES].grad[:3] != 0.0)


def test_virial_only_where_labelled_and_zero_without_labels():
    loss = PotentialLoss(energy={}, virial={"start_pref": 1.0, "limit_pref": 1.0})
    no_virial = _batch([_frame(3), _frame(2)], [0, 0])
    pred = _pred(no_virial)
    del pred[K.VIRIAL]  # a model asked for no virial returns none: fine when no frame has a virial label
    _, parts = loss(pred, no_virial)
    assert float(parts["loss/virial"]) == 0.0
    mixed = _batch([_frame(3, virial=True), _frame(2)], [0, 0])
    pred = _pred(mixed)
    with torch.no_grad():
        pred[K.VIRIAL][0] += 0.6
        pred[K.VIRIAL][1] += 100.0
    _, parts = loss(pred, mixed)
    assert float(parts["loss/virial"]) == pytest.approx((0.6 / 3) ** 2)


def test_huber_is_quadratic_then_linear():
    term = LossTerm(1.0, 1.0, kind="huber", huber_delta=0.1)
    err = torch.tensor([0.05, 2.0])
    pen = term.penalty(err)
    assert float(pen[0]) == pytest.approx(0.5 * 0.05**2)
    assert float(pen[1]) == pytest.approx(0.1 * (2.0 - 0.05))


def test_direct_forces_term_alone_or_with_conservative_forces():
    batch = _batch([_frame(3)], [0])
    pred = _pred(batch)
    pred[K.DIRECT_FORCES] = (batch[K.FORCES] + 0.2).requires_grad_(True)
    both = PotentialLoss(forces={"start_pref": 1.0, "limit_pref": 1.0},
                         direct_forces={"start_pref": 1.0, "limit_pref": 1.0})
    assert both.needs_forces and both.needs_direct_forces
    total, parts = both(pred, batch)
    assert float(parts["loss/forces"]) == 0.0
    assert float(parts["loss/direct_forces"]) == pytest.approx(0.04)
    direct_only = PotentialLoss(direct_forces={})
    assert not direct_only.needs_forces
    with pytest.raises(KeyError, match="direct_forces"):
        direct_only({k: v for k, v in pred.items() if k != K.DIRECT_FORCES}, batch)


def test_direct_consistency_pulls_direct_forces_to_the_detached_conservative_ones():
    batch = _batch([_frame(3), _frame(2)], [0, 0])
    batch[K.HAS_FORCES][:] = False  # needs no labels
    pred = _pred(batch)
    pred[K.FORCES] = (batch[K.FORCES] + 0.5).requires_grad_(True)
    pred[K.DIRECT_FORCES] = (pred[K.FORCES].detach() + 0.3).requires_grad_(True)
    loss = PotentialLoss(direct_consistency={})
    assert loss.needs_forces and loss.needs_direct_forces
    total, parts = loss(pred, batch)
    assert float(parts["loss/direct_consistency"]) == pytest.approx(0.09)
    assert float(parts["pref/direct_consistency"]) == 100.0
    total.backward()
    assert pred[K.FORCES].grad is None  # the conservative side is the target, not trained by this term
    assert torch.allclose(pred[K.DIRECT_FORCES].grad, torch.full_like(pred[K.DIRECT_FORCES], 100.0 * 2 * 0.3 / 15))
    with pytest.raises(KeyError, match="direct_consistency"):
        loss({k: v for k, v in pred.items() if k != K.FORCES}, batch)


def test_bad_loss_configs_raise():
    with pytest.raises(ValueError, match="unknown option"):
        PotentialLoss(energy={"start": 1.0})
    with pytest.raises(ValueError, match="no term"):
        PotentialLoss()
    with pytest.raises(ValueError, match="mse"):
        PotentialLoss(forces={"kind": "l1"})


def test_head_metrics_match_numpy_per_head():
    frames = [_frame(3), _frame(2, forces=False), _frame(4), _frame(3, energy=False, virial=True)]
    heads = [0, 0, 2, 2]
    batch = _batch(frames, heads)
    pred = {k: v.detach() for k, v in _pred(batch).items()}
    de = np.array([0.3, -0.1, 0.8, 5.0])
    df = RNG.normal(size=pred[K.FORCES].shape)
    dw = RNG.normal(size=(4, 3, 3))
    pred[K.ENERGY] = pred[K.ENERGY] + torch.tensor(de)
    pred[K.FORCES] = pred[K.FORCES] + torch.tensor(df)
    pred[K.VIRIAL] = pred[K.VIRIAL] + torch.tensor(dw)
    m = HeadMetrics(["a", "b", "c"])
    m.update(pred, batch)
    out = {k: float(v) for k, v in m.compute().items()}
    assert not any(k.startswith("b/") for k in out)  # no frame of head b
    epa_a = de[:2] / np.array([3, 2])
    assert out["a/energy_rmse_per_atom"] == pytest.approx(math.sqrt(np.mean(epa_a**2)))
    assert out["a/energy_mae_per_atom"] == pytest.approx(np.mean(np.abs(epa_a)))
    assert out["c/energy_mae_per_atom"] == pytest.approx(0.8 / 4)  # frame 4 has no energy label
    assert out["a/force_rmse"] == pytest.approx(math.sqrt(np.mean(df[:3] ** 2)))  # frame 2 has no forces
    assert out["c/force_mae"] == pytest.approx(np.mean(np.abs(df[5:])))
    assert out["c/virial_rmse_per_atom"] == pytest.approx(math.sqrt(np.mean((dw[3] / 3) ** 2)))
    assert "a/virial_rmse_per_atom" not in out
