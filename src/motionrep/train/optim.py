"""AdamW parameter groups, per-step schedule application and DINO-style per-parameter gradient clipping.

A group dict carries ``params`` plus two project keys read by :func:`apply_schedules`: ``lr_scale`` (multiplies the
scheduled lr) and ``apply_wd`` (whether the scheduled weight decay applies; never on biases, norms, 1-D parameters
or tokens and position embeddings).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

# Leaf names of parameters that never get weight decay whatever their shape (tokens, position embeddings).
_NO_DECAY_LEAF = re.compile(r"(token|tokens|pos_embed|pos_embedding)$")


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """True for biases, 1-D parameters (norm weights, gates) and token / position-embedding parameters."""
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim <= 1 or leaf == "bias" or bool(_NO_DECAY_LEAF.search(leaf))


def decay_groups(named_params: Iterable[tuple[str, nn.Parameter]], lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """Split the trainable parameters into a weight-decayed and a non-decayed group (empty groups dropped)."""
    decay, no_decay = [], []
    for name, p in named_params:
        if p.requires_grad:
            (no_decay if no_weight_decay(name, p) else decay).append(p)
    groups = [
        {"params": decay, "lr_scale": lr_scale, "apply_wd": True},
        {"params": no_decay, "lr_scale": lr_scale, "apply_wd": False},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(groups: list[dict[str, Any]], betas: tuple[float, float] | list[float]) -> torch.optim.AdamW:
    """AdamW over the groups; lr and weight decay are set every step by :func:`apply_schedules`."""
    if not groups:
        raise ValueError("the method has no trainable parameters")
    for g in groups:
        g.setdefault("lr_scale", 1.0)
        g.setdefault("apply_wd", True)
    return torch.optim.AdamW(groups, lr=0.0, weight_decay=0.0, betas=tuple(betas))


def apply_schedules(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    """Set every group's lr (times its ``lr_scale``) and weight decay (0 where ``apply_wd`` is false)."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g["lr_scale"]
        g["weight_decay"] = weight_decay if g["apply_wd"] else 0.0


@torch.no_grad()
def clip_grad_per_param(params: Iterable[torch.Tensor], max_norm: float, eps: float = 1e-6) -> torch.Tensor:
    """Scale each parameter's gradient separately so that its L2 norm is at most ``max_norm`` (DINO's rule:
    ``grad *= min(1, max_norm / (norm + eps))``). Returns the norms before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(0)
    norms = torch.stack(torch._foreach_norm(grads))
    scale = (max_norm / (norms + eps)).clamp(max=1.0)
    torch._foreach_mul_(grads, list(scale.unbind()))
    return norms
