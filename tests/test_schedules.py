"""Schedules against closed forms: warm-up, cosine endpoints, EMA momentum."""

import math

import pytest

from motionrep.ops.schedules import cosine, ema_momentum, warmup_cosine, warmup_steps


def test_cosine_endpoints_and_midpoint():
    assert cosine(0, 11, 0.04, 0.4) == pytest.approx(0.04)
    assert cosine(10, 11, 0.04, 0.4) == pytest.approx(0.4)
    assert cosine(5, 11, 0.04, 0.4) == pytest.approx(0.22)
    assert cosine(50, 11, 0.04, 0.4) == pytest.approx(0.4)
    assert cosine(0, 1, 1.0, 2.0) == 1.0


def test_warmup_then_cosine():
    total, warm, peak, final = 20, 4, 1e-3, 1e-6
    values = [warmup_cosine(s, total, peak, final, warm) for s in range(total)]
    assert values[:5] == pytest.approx([0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert values[-1] == pytest.approx(final)
    for s in range(warm, total):
        t = (s - warm) / (total - warm - 1)
        assert values[s] == pytest.approx(final + (peak - final) * 0.5 * (1 + math.cos(math.pi * t)))
    assert all(a >= b for a, b in zip(values[warm:], values[warm + 1 :], strict=False))


def test_ema_momentum():
    total = 100
    assert ema_momentum(0, total, 0.996) == pytest.approx(0.996)
    assert ema_momentum(total - 1, total, 0.996) == 1.0
    s = 30
    assert ema_momentum(s, total, 0.996) == pytest.approx(1 - 0.004 * (1 + math.cos(math.pi * s / (total - 1))) / 2)
    assert {ema_momentum(s, total, 0.996, "constant") for s in range(total)} == {0.996}
    with pytest.raises(ValueError, match="constant"):
        ema_momentum(0, total, 0.996, "linear")


def test_warmup_steps():
    assert warmup_steps(200, None, 0.05) == 10
    assert warmup_steps(200, 7, 0.05) == 7
    assert warmup_steps(5, 100, 0.0) == 5
