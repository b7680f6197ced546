"""Optional CoTracker3 (offline) adapter: code the user installed, weights from a LOCAL checkpoint file.

Never calls ``torch.hub`` and never downloads. CoTracker's weights are licensed CC-BY-NC 4.0 (non-commercial); the
notice is printed when the adapter is constructed and kept in :attr:`CoTrackerTracker.license`.

Settings of the released MoSiC pipeline: frames as float in [0, 255] resized (bilinear, align_corners) to 384x512,
queries on frame 0 scaled the same way, 6 refinement iterations, no backward tracking, the whole clip in one window
(length 60), visibility = sigmoid(visibility logit) > 0.9 with frame 0 forced visible, outputs rescaled to the frame.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from motionrep.tracking.base import check_inputs, finish

LICENSE_NOTICE = (
    "CoTracker (facebookresearch/co-tracker) weights are licensed CC-BY-NC 4.0: non-commercial use only, with "
    "attribution. See https://creativecommons.org/licenses/by-nc/4.0/."
)


class CoTrackerTracker:
    """CoTracker3 offline from ``checkpoint`` (a local ``.pth`` file, e.g. ``scaled_offline.pth``)."""

    name = "cotracker"
    license = LICENSE_NOTICE

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        device: str | None = None,
        resolution: tuple[int, int] = (384, 512),
        iterations: int = 6,
        threshold: float = 0.9,
        window: int = 60,
        max_points: int = 4096,
    ) -> None:
        print(f"[motionrep] {LICENSE_NOTICE}", file=sys.stderr)
        if checkpoint is None:
            raise ValueError(
                "the CoTracker tracker needs a local checkpoint file (checkpoint=PATH, e.g. scaled_offline.pth); "
                "motionrep never downloads weights"
            )
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"CoTracker checkpoint {path} does not exist (motionrep never downloads weights)")
        try:
            from cotracker.models.build_cotracker import build_cotracker
        except ImportError as err:
            raise ImportError(
                "the CoTracker tracker needs the co-tracker code installed separately "
                "(pip install git+https://github.com/facebookresearch/co-tracker); it is not a motionrep dependency"
            ) from err
        if not 0 < threshold < 1 or iterations < 1 or max_points < 1:
            raise ValueError("threshold must lie in (0, 1); iterations and max_points must be >= 1")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.checkpoint, self.resolution = path, tuple(resolution)
        self.iterations, self.threshold, self.window, self.max_points = iterations, threshold, window, max_points
        self.model = build_cotracker(str(path), offline=True, window_len=window, v2=False).to(self.device).eval()
        self.model.requires_grad_(False)

    @property
    def config(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint.name,
            "resolution": list(self.resolution),
            "iterations": self.iterations,
            "threshold": self.threshold,
            "window": self.window,
        }

    @torch.no_grad()
    def __call__(self, frames: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        frames, queries = check_inputs(frames, queries)
        h, w = frames.shape[1:3]
        if len(queries) == 0:
            return finish(np.zeros((len(frames), 0, 2)), np.zeros((len(frames), 0), dtype=bool), queries)
        rh, rw = self.resolution
        video = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float()
        video = F.interpolate(video, (rh, rw), mode="bilinear", align_corners=True)[None]
        # CoTracker's own (align-corners) scaling between the frame and its model resolution
        scale = torch.tensor([(rw - 1) / max(w - 1, 1), (rh - 1) / max(h - 1, 1)], device=self.device)
        q = torch.from_numpy(queries).to(self.device) * scale
        tracks, visible = [], []
        for chunk in q.split(self.max_points):  # bounds memory for dense query sets
            q3 = torch.cat([torch.zeros_like(chunk[:, :1]), chunk], dim=1)[None]  # (1, n, 3) as (t, x, y)
            out = self.model(video=video, queries=q3, iters=self.iterations)
            tracks.append(out[0][0] / scale)
            visible.append(out[1][0] > self.threshold)
        return finish(torch.cat(tracks, 1).cpu().numpy(), torch.cat(visible, 1).cpu().numpy(), queries)
