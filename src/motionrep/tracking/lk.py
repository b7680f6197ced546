"""Pyramidal Lucas–Kanade point tracking (OpenCV) with a forward–backward check.

Each step tracks the points from frame k to k+1 and back again on grayscale frames. A point stays visible while both
status flags are OK, the forward–backward round trip returns within ``fb_threshold`` pixels and the point lies
inside the frame. Loss is sticky, as for DIS; a point whose step failed keeps its last position.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from motionrep.ops.points import inside
from motionrep.tracking.base import check_inputs, finish


class LKTracker:
    """``calcOpticalFlowPyrLK``, ``window`` x ``window`` window, ``levels`` pyramid levels (1 = no pyramid)."""

    name = "lk"

    def __init__(
        self,
        window: int = 21,
        levels: int = 3,
        fb_threshold: float = 1.0,
        iterations: int = 30,
        progress: bool = False,
    ) -> None:
        if window < 3 or window % 2 == 0:
            raise ValueError(f"window must be an odd size >= 3, got {window}")
        if levels < 1 or iterations < 1 or not fb_threshold > 0:
            raise ValueError("levels and iterations must be >= 1 and fb_threshold > 0")
        self.window, self.levels, self.fb_threshold, self.iterations = window, levels, float(fb_threshold), iterations
        self.progress = progress  # a progress bar per clip (on a TTY); not part of the config

    @property
    def config(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "levels": self.levels,
            "fb_threshold": self.fb_threshold,
            "iterations": self.iterations,
        }

    def _lk(self, src: np.ndarray, dst: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out, status, _ = cv2.calcOpticalFlowPyrLK(
            src,
            dst,
            pts.reshape(-1, 1, 2),
            None,
            winSize=(self.window, self.window),
            maxLevel=self.levels - 1,  # OpenCV counts levels above the base: 3 levels = maxLevel 2
            criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, self.iterations, 0.01),
        )
        return out.reshape(-1, 2), status.reshape(-1).astype(bool)

    def __call__(self, frames: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames, queries = check_inputs(frames, queries)
        t, h, w = frames.shape[:3]
        gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
        tracks = np.empty((t, len(queries), 2), dtype=np.float32)
        visible = np.ones((t, len(queries)), dtype=bool)
        tracks[0] = queries
        for k in tqdm(range(t - 1), desc=self.name, unit="frame", disable=None if self.progress else True):
            p = tracks[k]
            if len(p) == 0:
                tracks[k + 1] = p
                continue
            q, ok_fwd = self._lk(gray[k], gray[k + 1], p)
            back, ok_bwd = self._lk(gray[k + 1], gray[k], q)
            ok = ok_fwd & ok_bwd & np.isfinite(q).all(1)
            q = np.where(ok[:, None], q, p)
            ok &= np.linalg.norm(back - p, axis=1) < self.fb_threshold
            ok &= inside(q, (w, h))
            tracks[k + 1] = q
            visible[k + 1] = visible[k] & ok
        return finish(tracks, visible, queries)
