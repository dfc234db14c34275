"""Exponential moving average of weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lam.train.ema import ExponentialMovingAverage


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    net.register_buffer("ref", torch.tensor([1.0, 2.0]))
    return net


def _perturb(net: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in net.parameters():
            p.add_(value)


def test_update_blends_with_decay():
    net = _net()
    start = {k: v.clone() for k, v in net.named_parameters()}
    ema = ExponentialMovingAverage(net, decay=0.9, warmup=False)
    _perturb(net, 1.0)
    ema.update(net)
    for name, p in net.named_parameters():
        torch.testing.assert_close(ema.shadow[name], 0.9 * start[name] + 0.1 * p.detach())
    _perturb(net, 1.0)
    ema.update(net)
    for name in start:
        torch.testing.assert_close(ema.shadow[name], start[name] + 0.1 * 1.0 * 0.9 + 0.1 * 2.0, rtol=0, atol=1e-6)


def test_warmup_decay_ramps_up():
    ema = ExponentialMovingAverage(_net(), decay=0.999, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)
    ema.num_updates = 90
    assert ema.current_decay() == pytest.approx(91 / 100)
    ema.num_updates = 10**6
    assert ema.current_decay() == 0.999


def test_average_parameters_swaps_and_restores_even_on_error():
    net = _net()
    ema = ExponentialMovingAverage(net, decay=0.5, warmup=False)
    _perturb(net, 2.0)
    ema.update(net)  # shadow = start + 1
    live = {k: v.clone() for k, v in net.state_dict().items()}
    with ema.average_parameters(net):
        for name, p in net.named_parameters():
            torch.testing.assert_close(p.detach(), live[name] - 1.0)
        torch.testing.assert_close(net.ref, live["ref"])  # buffers are not averaged
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, live[k])
    with pytest.raises(RuntimeError, match="boom"), ema.average_parameters(net):
        raise RuntimeError("boom")
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, live[k])


def test_state_dict_round_trip_and_mismatch():
    net = _net()
    ema = ExponentialMovingAverage(net, decay=0.8)
    _perturb(net, 0.5)
    ema.update(net)
    state = ema.state_dict()
    other = ExponentialMovingAverage(_net(), decay=0.1)
    other.load_state_dict(state)
    assert other.decay == 0.8 and other.num_updates == 1
    for k in ema.shadow:
        torch.testing.assert_close(other.shadow[k], ema.shadow[k])
    bigger = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1), nn.Linear(1, 1))
    with pytest.raises(RuntimeError, match="EMA state does not match"):
        ExponentialMovingAverage(bigger).load_state_dict(state)
    with pytest.raises(RuntimeError, match="trainable parameters"):
        ema.update(bigger)


def test_frozen_parameters_are_not_tracked():
    net = _net()
    net[0].weight.requires_grad_(False)
    ema = ExponentialMovingAverage(net)
    assert "0.weight" not in ema.shadow and "0.bias" in ema.shadow
    with pytest.raises(ValueError, match="decay"):
        ExponentialMovingAverage(net, decay=1.0)
