"""Which frames of a video a training example uses: frame pairs (Midway, DINO) and clips (MoSiC).

Samplers are pure functions of (video length, ``numpy.random.Generator``), so an example is reproducible from the
seed that built the generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class VideoTooShortError(ValueError):
    """The video has too few frames for the sampler."""


@dataclass(frozen=True)
class PairSampler:
    """Frame pairs ``(t, t + gap)`` with ``gap`` uniform in ``[gap[0], gap[1]]`` frames; ``repeats`` pairs per visit.

    As in Midway's BDD loader, the start is uniform over ``[0, L - 1 - hi]`` and the gap independent of it, with
    ``hi = min(gap[1], L - 1)`` so that shorter videos still give pairs whose gap is at least ``gap[0]``.
    """

    gap: tuple[int, int] = (15, 30)
    repeats: int = 1

    def __post_init__(self) -> None:
        lo, hi = self.gap
        if not 0 <= lo <= hi:
            raise ValueError(f"gap range must satisfy 0 <= lo <= hi, got {self.gap}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")

    def min_frames(self) -> int:
        return self.gap[0] + 1

    def sample(self, num_frames: int, rng: np.random.Generator) -> np.ndarray:
        """``repeats`` pairs of frame indices, shape (repeats, 2)."""
        lo = self.gap[0]
        hi = min(self.gap[1], num_frames - 1)
        if hi < lo:
            raise VideoTooShortError(f"{num_frames} frames cannot give a pair with gap >= {lo}")
        start = rng.integers(0, num_frames - hi, size=self.repeats)
        gap = rng.integers(lo, hi + 1, size=self.repeats)
        return np.stack([start, start + gap], axis=1)

    def sample_at(self, num_frames: int, start: int, rng: np.random.Generator) -> np.ndarray:
        """One pair from a given source frame (Walking Tours: every frame is a source once per epoch), shape (1, 2);
        the gap is uniform in ``[gap[0], min(gap[1], L - 1 - start)]``."""
        hi = min(self.gap[1], num_frames - 1 - start)
        if hi < self.gap[0] or start < 0:
            raise VideoTooShortError(f"frame {start} of {num_frames} cannot start a pair with gap >= {self.gap[0]}")
        return np.array([[start, start + rng.integers(self.gap[0], hi + 1)]])


@dataclass(frozen=True)
class ClipSampler:
    """Clips of ``num_frames`` frames ``start + k * step`` (MoSiC's ``regular`` mode).

    For a video of L frames and T = ``num_frames``: if L >= T * step, ``step`` is kept and the start is uniform in
    ``[0, L - T * step]``; if T <= L < T * step the step shrinks to ``L // T``; if L < T the clip is frames
    ``0..T-1`` with indices past the end clamped to the last frame.
    """

    num_frames: int = 12
    step: int = 6

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.step < 1:
            raise ValueError(f"num_frames and step must be >= 1, got {self.num_frames}, {self.step}")

    def min_frames(self) -> int:
        return 1

    def sample(self, num_frames: int, rng: np.random.Generator) -> np.ndarray:
        """Frame indices of one clip, shape (num_frames,)."""
        t = self.num_frames
        if num_frames < 1:
            raise VideoTooShortError("a video with no frames gives no clip")
        if num_frames < t:
            return np.minimum(np.arange(t), num_frames - 1)
        step = self.step if num_frames >= t * self.step else num_frames // t
        start = rng.integers(0, num_frames - t * step + 1)
        return start + step * np.arange(t)
