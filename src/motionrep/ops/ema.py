"""Exponential moving average of a student module into its teacher copy."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """An exact, frozen copy of ``student`` (no gradients) to be updated only by :func:`ema_update`.

    The copy keeps the student's stochastic layers (drop-path); build the teacher separately when they differ.
    """
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    """``teacher <- momentum * teacher + (1 - momentum) * student`` for every parameter (buffers are untouched).

    Both modules must have the same parameter names and shapes.
    """
    s_params = dict(student.named_parameters())
    t_named = list(teacher.named_parameters())
    if s_params.keys() != {name for name, _ in t_named}:
        raise ValueError("EMA student and teacher have different parameters")
    t_params = [p for _, p in t_named]
    s_list = [s_params[name].detach() for name, _ in t_named]
    torch._foreach_mul_(t_params, momentum)
    torch._foreach_add_(t_params, s_list, alpha=1.0 - momentum)
