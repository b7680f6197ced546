"""Point tracking by chaining OpenCV DIS optical flow, with forward–backward consistency for visibility.

For each consecutive pair the forward flow ``F`` (k → k+1) and backward flow ``B`` (k+1 → k) are computed on
grayscale frames. A point ``p`` moves to ``q = p + F(p)``, with ``F`` read bilinearly at sub-pixel positions (pixel
centres at integer coordinates, border values outside). It stays visible while
``|F(p) + B(q)|² < α1 (|F(p)|² + |B(q)|²) + α2`` (UnFlow's test) and ``q`` lies inside the frame. Loss is sticky:
once a point fails it stays invisible; its position is still propagated but carries no meaning.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from motionrep.ops.points import inside, pixel_to_grid
from motionrep.tracking.base import check_inputs, finish

PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


def sample_field(field: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear lookup of a dense field (H, W, C) at points (N, 2) (x, y) → (N, C); border values outside."""
    h, w, c = field.shape
    fmap = torch.from_numpy(np.ascontiguousarray(field, dtype=np.float32)).permute(2, 0, 1)[None]
    grid = pixel_to_grid(torch.from_numpy(np.asarray(xy, dtype=np.float32)), (w, h))[None, :, None]
    out = F.grid_sample(fmap, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0, :, :, 0].t().numpy()


def fb_consistent(fwd: np.ndarray, bwd: np.ndarray, alpha1: float, alpha2: float) -> np.ndarray:
    """UnFlow forward–backward test for flow vectors (N, 2) read at p and at q = p + fwd: bool (N,)."""
    err = np.sum((fwd + bwd) ** 2, axis=-1)
    return err < alpha1 * (np.sum(fwd**2, axis=-1) + np.sum(bwd**2, axis=-1)) + alpha2


class DISTracker:
    """DIS flow chaining; ``preset`` is ``ultrafast``, ``fast`` or ``medium``."""

    name = "dis"

    def __init__(
        self, preset: str = "medium", alpha1: float = 0.01, alpha2: float = 0.5, progress: bool = False
    ) -> None:
        if preset not in PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; choose one of {', '.join(PRESETS)}")
        if alpha1 < 0 or alpha2 < 0:
            raise ValueError(f"alpha1 and alpha2 must be >= 0, got {alpha1}, {alpha2}")
        self.preset, self.alpha1, self.alpha2 = preset, float(alpha1), float(alpha2)
        self.progress = progress  # a progress bar per clip (on a TTY); not part of the config

    @property
    def config(self) -> dict[str, Any]:
        return {"preset": self.preset, "alpha1": self.alpha1, "alpha2": self.alpha2}

    def flow(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """Dense flow (H, W, 2) (dx, dy) from grayscale ``src`` to ``dst``."""
        dis = cv2.DISOpticalFlow_create(PRESETS[self.preset])  # fresh instance: no state between calls
        return dis.calc(src, dst, None)

    def __call__(self, frames: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames, queries = check_inputs(frames, queries)
        t, h, w = frames.shape[:3]
        gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
        tracks = np.empty((t, len(queries), 2), dtype=np.float32)
        visible = np.ones((t, len(queries)), dtype=bool)
        tracks[0] = queries
        for k in tqdm(range(t - 1), desc=self.name, unit="frame", disable=None if self.progress else True):
            p = tracks[k]
            fwd = sample_field(self.flow(gray[k], gray[k + 1]), p)
            q = p + fwd
            bwd = sample_field(self.flow(gray[k + 1], gray[k]), q)
            ok = fb_consistent(fwd, bwd, self.alpha1, self.alpha2) & inside(q, (w, h))
            tracks[k + 1] = q
            visible[k + 1] = visible[k] & ok
        return finish(tracks, visible, queries)
