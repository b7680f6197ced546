"""Per-clip track cache on disk.

One track file per (video id, frame indices, frame resolution, tracker name, tracker-config hash, query set), stored
as ``ROOT/<tracker>/<video id>/<digest>.npz`` in the shared track-file format and written atomically. A corrupt
entry is reported and recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from motionrep.tracking.base import Tracker, check_inputs, load_tracks, save_tracks


def config_hash(config: dict[str, Any]) -> str:
    """Stable short hash of a JSON-serialisable tracker configuration."""
    try:
        text = json.dumps(config, sort_keys=True, separators=(",", ":"))
    except TypeError as err:
        raise ValueError(f"tracker config must be JSON-serialisable: {err}") from err
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrackKey:
    """What determines a clip's tracks."""

    video_id: str
    frame_indices: tuple[int, ...]
    resolution: tuple[int, int]  # (W, H) of the frames given to the tracker
    tracker: str
    config_hash: str
    queries_hash: str

    @staticmethod
    def make(
        video_id: str,
        frame_indices: Sequence[int],
        resolution: tuple[int, int],
        tracker: str,
        config: dict[str, Any],
        queries: np.ndarray,
    ) -> TrackKey:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        return TrackKey(
            str(video_id),
            tuple(int(i) for i in frame_indices),
            (int(resolution[0]), int(resolution[1])),
            str(tracker),
            config_hash(config),
            hashlib.sha256(q.tobytes() + str(q.shape).encode()).hexdigest()[:16],
        )

    @property
    def digest(self) -> str:
        fields = [self.video_id, self.frame_indices, self.resolution, self.tracker, self.config_hash, self.queries_hash]
        text = json.dumps(fields)
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "_"


class TrackCache:
    """Track files under ``root``; :meth:`track` computes on a miss and stores the result."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: TrackKey) -> Path:
        return self.root / _safe(key.tracker) / _safe(key.video_id) / f"{key.digest}.npz"

    def get(self, key: TrackKey) -> tuple[np.ndarray, np.ndarray] | None:
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            tracks, visible = load_tracks(path)
        except ValueError as err:
            warnings.warn(f"ignoring corrupt track-cache entry: {err}", stacklevel=2)
            return None
        if tracks.shape[0] != len(key.frame_indices):
            warnings.warn(f"ignoring track-cache entry {path} with {tracks.shape[0]} frames", stacklevel=2)
            return None
        return tracks, visible

    def put(self, key: TrackKey, tracks: np.ndarray, visible: np.ndarray) -> Path:
        return save_tracks(self.path(key), tracks, visible)

    def track(
        self, tracker: Tracker, video_id: str, frame_indices: Sequence[int], frames: np.ndarray, queries: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Tracks of ``queries`` through ``frames`` (the video's frames at ``frame_indices``), cached."""
        frames, queries = check_inputs(frames, queries)
        if len(frame_indices) != len(frames):
            raise ValueError(f"{len(frame_indices)} frame indices for a clip of {len(frames)} frames")
        h, w = frames.shape[1:3]
        key = TrackKey.make(video_id, frame_indices, (w, h), tracker.name, tracker.config, queries)
        hit = self.get(key)
        if hit is not None:
            return hit
        tracks, visible = tracker(frames, queries)
        self.put(key, tracks, visible)
        return tracks, visible
