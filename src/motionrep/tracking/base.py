"""The tracker interface, the tracker factory and the one reader/writer of point-track files.

A tracker maps a clip ``frames`` (T, H, W, 3) uint8 RGB and query points ``queries`` (N, 2) in (x, y) pixel
coordinates of frame 0 (the convention of :mod:`motionrep.ops.points`) to ``tracks`` (T, N, 2) float32 (x, y) in the
same frame coordinates and ``visible`` (T, N) bool. Frame 0 is visible by definition and ``tracks[0] == queries``.
Trackers are stateless and deterministic for fixed inputs, and never touch the network.

Track files (``.npz``) hold exactly ``tracks`` (T, N, 2) float32 and ``visible`` (T, N) bool: the synthetic world's
``Tracks/`` files, ``motionrep track`` output and the track cache share this format.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from motionrep.ops.points import grid_points, inside


@runtime_checkable
class Tracker(Protocol):
    """Frames + frame-0 queries → (tracks, visible); see the module docstring."""

    name: str

    @property
    def config(self) -> dict[str, Any]:
        """The settings that determine the output (hashed into the track-cache key)."""
        ...

    def __call__(self, frames: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


TRACKERS = ("gt", "dis", "lk", "cotracker")


def get_tracker(name: str, **cfg: Any) -> Tracker:
    """Build a tracker by name (``gt``, ``dis``, ``lk``, ``cotracker``) with its keyword settings."""
    key = name.lower().replace("-", "_")
    if key in ("gt", "ground_truth"):
        from motionrep.tracking.ground_truth import GroundTruthTracker as cls
    elif key == "dis":
        from motionrep.tracking.dis import DISTracker as cls
    elif key == "lk":
        from motionrep.tracking.lk import LKTracker as cls
    elif key == "cotracker":
        from motionrep.tracking.cotracker import CoTrackerTracker as cls
    else:
        raise ValueError(f"unknown tracker {name!r}; choose one of {', '.join(TRACKERS)}")
    try:
        return cls(**cfg)
    except TypeError as err:  # unknown or missing settings
        raise ValueError(f"tracker {name!r}: {err}") from err


def check_inputs(frames: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate a tracker's inputs; returns them as contiguous uint8 frames and float32 queries."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8 RGB, got {frames.shape} {frames.dtype}")
    if frames.shape[0] < 1 or min(frames.shape[1:3]) < 1:
        raise ValueError(f"frames must hold at least one non-empty frame, got {frames.shape}")
    queries = np.asarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != 2:
        raise ValueError(f"queries must be (N, 2) (x, y) points, got {queries.shape}")
    h, w = frames.shape[1:3]
    outside = ~inside(queries, (w, h))
    if outside.any():
        raise ValueError(f"{int(outside.sum())} queries lie outside the {w}x{h} frame 0 (or are not finite)")
    return np.ascontiguousarray(frames), np.ascontiguousarray(queries)


def check_tracks(tracks: np.ndarray, visible: np.ndarray, source: str = "tracks") -> tuple[np.ndarray, np.ndarray]:
    """Validate a (tracks, visible) pair; returns float32 tracks and bool visibility."""
    tracks, visible = np.asarray(tracks), np.asarray(visible)
    if tracks.ndim != 3 or tracks.shape[-1] != 2:
        raise ValueError(f"{source}: tracks must be (T, N, 2), got {tracks.shape}")
    if visible.shape != tracks.shape[:2]:
        raise ValueError(f"{source}: visible must be (T, N) = {tracks.shape[:2]}, got {visible.shape}")
    if visible.dtype != np.bool_ and not np.isin(visible, (0, 1)).all():
        raise ValueError(f"{source}: visible must be boolean")
    return tracks.astype(np.float32, copy=False), visible.astype(bool, copy=False)


def save_tracks(path: str | Path, tracks: np.ndarray, visible: np.ndarray) -> Path:
    """Write a track file atomically (temporary file in the same folder, then rename)."""
    tracks, visible = check_tracks(tracks, visible, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, tracks=tracks, visible=visible)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_tracks(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a track file: ``tracks`` (T, N, 2) float32 and ``visible`` (T, N) bool; clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such track file")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in ("tracks", "visible") if key in data.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as err:  # truncated, not an npz, or pickled
        raise ValueError(f"{path}: unreadable track file ({err})") from err
    missing = {"tracks", "visible"} - set(arrays)
    if missing:
        raise ValueError(f"{path}: not a track file (missing {', '.join(sorted(missing))})")
    return check_tracks(arrays["tracks"], arrays["visible"], str(path))


def grid_queries(n: int, width: int, height: int) -> np.ndarray:
    """The default query grid: centres of ``n x n`` equal cells of a ``width x height`` frame, (n*n, 2), x fastest."""
    if n < 1:
        raise ValueError(f"grid size must be >= 1, got {n}")
    return grid_points(n, (width, height)).numpy()


def finish(tracks: np.ndarray, visible: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Enforce the frame-0 contract (tracks[0] = queries, visible[0] = True) and the output dtypes."""
    tracks = np.asarray(tracks, dtype=np.float32)
    visible = np.asarray(visible, dtype=bool)
    tracks[0] = queries
    visible[0] = True
    return tracks, visible
