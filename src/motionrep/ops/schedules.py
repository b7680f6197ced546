"""Training schedules as pure functions of the optimiser step: the project's one source of truth for the
learning rate, weight decay and EMA momentum at any step.

``step`` runs over ``0 .. total - 1``; the last step reaches the final value exactly.
"""

from __future__ import annotations

import math


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Half-cosine from ``start`` (step 0) to ``end`` (step ``total - 1`` and beyond)."""
    t = min(max(step, 0), total - 1) / max(total - 1, 1)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def warmup_cosine(step: int, total: int, peak: float, final: float, warmup: int, start: float = 0.0) -> float:
    """Linear warm-up from ``start`` to ``peak`` over ``warmup`` steps, then a cosine from ``peak`` to ``final``.

    Step ``warmup`` is the first step at ``peak``; the cosine spans the remaining ``total - warmup`` steps.
    """
    if warmup > 0 and step < warmup:
        return start + (peak - start) * step / warmup
    return cosine(step - warmup, total - warmup, peak, final)


def ema_momentum(step: int, total: int, base: float, schedule: str = "cosine") -> float:
    """EMA teacher momentum: ``cosine`` from ``base`` at step 0 to 1 at the last step, or ``constant``."""
    if schedule == "constant":
        return base
    if schedule == "cosine":
        return cosine(step, total, base, 1.0)
    raise ValueError(f"unknown EMA schedule {schedule!r}; expected 'cosine' or 'constant'")


def warmup_steps(total: int, steps: int | None, fraction: float) -> int:
    """Warm-up length: ``steps`` when given, else ``round(fraction * total)``; never longer than the run."""
    n = steps if steps is not None else round(fraction * total)
    return max(0, min(int(n), total))
