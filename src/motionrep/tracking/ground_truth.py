"""Ground-truth tracks from the synthetic world.

Wraps a synthetic video's exact tracker, ``video.track(xy0, t0) -> (tracks (T_video, N, 2), visible (T_video, N))``
(``motionrep.data.synth.SynthVideo``): occlusion follows the z-order and leaving the frame makes a point invisible.
The clip handed to the tracker must be the video's frames at ``indices`` (all frames by default); this is checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from motionrep.tracking.base import check_inputs, finish


class TrackableVideo(Protocol):
    frames: np.ndarray  # (T, H, W, 3) uint8

    def track(self, xy0: np.ndarray, t0: int = 0) -> tuple[np.ndarray, np.ndarray]: ...


class GroundTruthTracker:
    """Exact tracks of a synthetic ``video`` for the clip made of its frames at ``indices``."""

    name = "gt"

    def __init__(self, video: TrackableVideo, indices: Sequence[int] | None = None) -> None:
        if not hasattr(video, "track") or not hasattr(video, "frames"):
            raise ValueError("the ground-truth tracker needs a synthetic video (with .frames and .track)")
        n = len(video.frames)
        self.video = video
        self.indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        if self.indices.size == 0 or self.indices.min() < 0 or self.indices.max() >= n:
            raise ValueError(f"frame indices must be non-empty and within [0, {n})")

    @property
    def config(self) -> dict[str, Any]:
        return {"indices": self.indices.tolist()}

    def __call__(self, frames: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames, queries = check_inputs(frames, queries)
        expected = self.video.frames[self.indices]
        if frames.shape != expected.shape or not np.array_equal(frames, expected):
            raise ValueError(
                f"the clip {frames.shape} is not this synthetic video's frames at the given indices {expected.shape}; "
                "ground truth only exists for the video's own frames"
            )
        tracks, visible = self.video.track(queries, t0=int(self.indices[0]))
        return finish(np.asarray(tracks)[self.indices], np.asarray(visible)[self.indices], queries)
