"""Decoded video access: the :class:`VideoSource` protocol and its backends.

A source exposes ``name``, ``num_frames``, ``fps``, ``size`` = (H, W) and ``read(indices) -> (n, H, W, 3) uint8 RGB``
in the order of ``indices`` (repeats allowed). Any failure to decode — unreadable, corrupt or truncated file, missing
or unreadable frame image — raises :class:`VideoReadError` naming the file, so that the datasets can skip the video
with a warning instead of crashing or hanging.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import av
import cv2
import numpy as np
from PIL import Image

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


_FRAME_COUNTS: dict[tuple[str, int, int], int] = {}  # counted frames of containers without a frame count


class VideoReadError(RuntimeError):
    """A video (or one of its frames) cannot be decoded; the message names the file."""


@runtime_checkable
class VideoSource(Protocol):
    name: str

    @property
    def num_frames(self) -> int: ...

    @property
    def fps(self) -> float: ...

    @property
    def size(self) -> tuple[int, int]: ...

    def read(self, indices: Sequence[int]) -> np.ndarray: ...

    def close(self) -> None: ...


def _check_indices(indices: Sequence[int], num_frames: int, name: str) -> np.ndarray:
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError(f"{name}: read() needs at least one frame index")
    if idx.min() < 0 or idx.max() >= num_frames:
        raise IndexError(f"{name}: frame indices {idx.min()}..{idx.max()} outside [0, {num_frames})")
    return idx


class PyAVSource:
    """A video file decoded with PyAV, with frame-index seeking.

    ``read`` seeks to the keyframe at or before the first wanted frame and decodes forward; it seeks again only when
    the next wanted frame lies more than ``seek_gap`` frames ahead. Frame ``k`` is the frame whose presentation time
    is ``k / fps`` after the stream start. The frame count comes from the stream header, or from one counted demux
    (no decoding) when the container does not store it. The container stays open until :meth:`close`.
    """

    def __init__(self, path: str | Path, threads: int = 1, seek_gap: int = 64) -> None:
        self.path = Path(path)
        self.name = self.path.stem
        self.seek_gap = seek_gap
        try:
            self._container = av.open(str(self.path))
            if not self._container.streams.video:
                raise VideoReadError(f"{self.path}: no video stream")
            self._stream = self._container.streams.video[0]
            self._stream.thread_type = "AUTO" if threads > 1 else "SLICE"
            self._stream.codec_context.thread_count = threads
            rate = self._stream.average_rate or self._stream.guessed_rate or self._stream.base_rate
            if not rate:
                raise VideoReadError(f"{self.path}: stream has no frame rate")
            self._rate = Fraction(rate)
            self._size = (int(self._stream.codec_context.height), int(self._stream.codec_context.width))
            if min(self._size) <= 0:
                raise VideoReadError(f"{self.path}: stream has no frame size")
            self._num_frames = int(self._stream.frames) or self._count_frames()
        except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
            self.close()
            raise VideoReadError(f"{self.path}: cannot open video ({err})") from err
        except VideoReadError:
            self.close()
            raise
        if self._num_frames <= 0:
            self.close()
            raise VideoReadError(f"{self.path}: video has no frames")

    def _count_frames(self) -> int:
        """Frames counted by demuxing (no decoding), once per file version and process."""
        stat = self.path.stat()
        key = (str(self.path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _FRAME_COUNTS:
            packets = self._container.demux(self._stream)
            _FRAME_COUNTS[key] = sum(1 for p in packets if p.size > 0 and p.pts is not None)
            self._container.seek(0, stream=self._stream, backward=True)
        return _FRAME_COUNTS[key]

    @property
    def num_frames(self) -> int:
        return self._num_frames

    @property
    def fps(self) -> float:
        return float(self._rate)

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def _start_pts(self) -> int:
        return int(self._stream.start_time or 0)

    def _index(self, pts: int) -> int:
        return round((pts - self._start_pts()) * self._stream.time_base * self._rate)

    def _seek(self, index: int) -> None:
        pts = self._start_pts() + int(Fraction(index) / self._rate / self._stream.time_base)
        self._container.seek(pts, stream=self._stream, backward=True, any_frame=False)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        idx = _check_indices(indices, self._num_frames, str(self.path))
        wanted = np.unique(idx)
        decoded: dict[int, np.ndarray] = {}
        i = 0
        try:
            while i < len(wanted):
                self._seek(int(wanted[i]))
                for frame in self._container.decode(self._stream):
                    if frame.pts is None:
                        continue
                    k = self._index(frame.pts)
                    if k < wanted[i]:
                        continue
                    image = frame.to_ndarray(format="rgb24")
                    while i < len(wanted) and wanted[i] <= k:  # a missing timestamp is served by the next frame
                        decoded[int(wanted[i])] = image
                        i += 1
                    if i == len(wanted) or wanted[i] > k + self.seek_gap:
                        break
                else:
                    raise VideoReadError(
                        f"{self.path}: truncated video, decoding ended before frame {wanted[i]} "
                        f"(header says {self._num_frames} frames)"
                    )
        except (av.error.FFmpegError, OSError) as err:
            raise VideoReadError(f"{self.path}: decoding failed ({err})") from err
        return np.stack([decoded[int(k)] for k in idx])

    def close(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            container.close()
            self._container = None

    def __enter__(self) -> PyAVSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def natural_key(path: Path) -> tuple:
    """Sort key that orders ``img_2.jpg`` before ``img_10.jpg``."""
    return tuple(int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", path.name))


def list_images(folder: Path) -> list[Path]:
    """The jpg/png files directly inside ``folder``, in natural order."""
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS), key=natural_key)


class FrameFolderSource:
    """A video stored as one image per frame (jpg/png) in a folder, frames in natural filename order."""

    def __init__(self, folder: str | Path, files: Sequence[Path] | None = None, fps: float = 30.0) -> None:
        self.folder = Path(folder)
        self.name = self.folder.name
        self._fps = float(fps)
        try:
            self.files = list(files) if files is not None else list_images(self.folder)
        except OSError as err:
            raise VideoReadError(f"{self.folder}: cannot list frames ({err})") from err
        if not self.files:
            raise VideoReadError(f"{self.folder}: no jpg/png frames")
        try:
            with Image.open(self.files[0]) as im:
                self._size = (im.height, im.width)
        except OSError as err:
            raise VideoReadError(f"{self.files[0]}: unreadable frame ({err})") from err

    @property
    def num_frames(self) -> int:
        return len(self.files)

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    def _load(self, path: Path) -> np.ndarray:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise VideoReadError(f"{path}: missing or unreadable frame")
        if image.shape[:2] != self._size:
            raise VideoReadError(f"{path}: frame size {image.shape[:2]} differs from the video's {self._size}")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        idx = _check_indices(indices, len(self.files), str(self.folder))
        wanted = np.unique(idx)
        decoded = {int(k): self._load(self.files[k]) for k in wanted}
        return np.stack([decoded[int(k)] for k in idx])

    def close(self) -> None:
        """Nothing to release (files are read on demand)."""

    def __enter__(self) -> FrameFolderSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FrameCache:
    """A least-recently-used store of decoded frame arrays, bounded in bytes (one per process)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Any, np.ndarray] = OrderedDict()
        self._bytes = 0

    def get(self, key: Any) -> np.ndarray | None:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        return None

    def put(self, key: Any, frames: np.ndarray) -> None:
        if frames.nbytes > self.max_bytes or key in self._items:
            return
        self._items[key] = frames
        self._bytes += frames.nbytes
        while self._bytes > self.max_bytes:
            self._bytes -= self._items.popitem(last=False)[1].nbytes

    def __len__(self) -> int:
        return len(self._items)


class SynthSource:
    """One video of the synthetic world (``motionrep.data.synth``), generated in memory on first access.

    Besides frames it answers exact point tracks: :meth:`track` is the ground-truth tracker. With a ``cache``, the
    frames of revisited videos are not rendered again, and tracks come from the world's scene description
    (``world.scene(i)``) without rendering.
    """

    def __init__(self, world: Any, index: int, fps: float = 30.0, cache: FrameCache | None = None) -> None:
        self.world = world
        self.index = index
        self.name = f"synth-{index:06d}"
        self._fps = fps
        self._cache = cache
        self._video: Any = None
        self._frames = cache.get(index) if cache is not None else None

    @property
    def video(self) -> Any:
        if self._video is None:
            self._video = self.world[self.index]
        return self._video

    @property
    def frames(self) -> np.ndarray:
        if self._frames is None:
            self._frames = self.video.frames
            if self._cache is not None:
                self._cache.put(self.index, self._frames)
        return self._frames

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.frames.shape[1:3])

    def read(self, indices: Sequence[int]) -> np.ndarray:
        idx = _check_indices(indices, self.num_frames, self.name)
        return self.frames[idx]

    def track(self, indices: Sequence[int], queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact tracks of ``queries`` (N, 2) given on frame ``indices[0]``, at every frame of ``indices``.

        Returns ``tracks`` (T, N, 2) float32 (x, y) and ``visible`` (T, N) bool.
        """
        idx = _check_indices(indices, self.num_frames, self.name)
        queries = np.asarray(queries, dtype=np.float32)
        if self._video is None and hasattr(self.world, "scene"):
            from motionrep.data.synth import track_points

            tracks, visible = track_points(self.world.scene(self.index), queries, int(idx[0]))
        else:
            tracks, visible = self.video.track(queries, t0=int(idx[0]))
        return np.asarray(tracks, dtype=np.float32)[idx], np.asarray(visible, dtype=bool)[idx]

    def close(self) -> None:
        self._video = self._frames = None

    def __enter__(self) -> SynthSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_video(
    path: str | Path, frames: np.ndarray, fps: int = 30, codec: str = "libx264", gop: int = 12, crf: int = 18
) -> Path:
    """Encode ``frames`` (T, H, W, 3) uint8 RGB as a video file (H.264 in yuv420p by default; H, W even)."""
    path = Path(path)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.gop_size = gop
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "veryfast"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")))
        container.mux(stream.encode())
    return path
