"""EMA update against the formula, computed independently per parameter."""

import pytest
import torch
from torch import nn

from motionrep.ops.ema import ema_update, make_teacher


def test_ema_update_formula():
    student = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    teacher = make_teacher(student)
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(student.parameters(), teacher.parameters(), strict=True))
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    before = [p.clone() for p in teacher.parameters()]
    ema_update(student, teacher, 0.9)
    for t0, s, t in zip(before, student.parameters(), teacher.parameters(), strict=True):
        torch.testing.assert_close(t, 0.9 * t0 + 0.1 * s)


def test_momentum_one_keeps_teacher_and_zero_copies_student():
    student, teacher = nn.Linear(3, 2), nn.Linear(3, 2)
    before = teacher.weight.clone()
    ema_update(student, teacher, 1.0)
    assert torch.equal(teacher.weight, before)
    ema_update(student, teacher, 0.0)
    assert torch.equal(teacher.weight, student.weight)


def test_mismatched_modules_rejected():
    with pytest.raises(ValueError, match="different parameters"):
        ema_update(nn.Linear(3, 2), nn.Sequential(nn.Linear(3, 2)), 0.5)
