"""``motionrep track``: follow a grid of frame-0 points through a video and save the tracks (and a figure)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import typer

from motionrep.data.sources import VIDEO_EXTENSIONS, FrameFolderSource, PyAVSource, VideoReadError


def synth_video(path: Path) -> Any | None:
    """The synthetic-world video behind ``DIR/<split>/frames/<name>`` or ``DIR/<split>/videos/<name>.mp4``, if any."""
    from motionrep.data.synth import load_split

    kind, split_dir = path.parent, path.parent.parent
    root = split_dir.parent
    if kind.name not in ("frames", "videos") or not (root / "manifest.json").is_file():
        return None
    split = load_split(root, split_dir.name)
    name = path.stem if kind.name == "videos" else path.name
    if name not in split.names:
        raise ValueError(f"{path}: video {name!r} is not listed in {root / 'manifest.json'}")
    video = split[split.names.index(name)]
    if video.scene is None:
        raise ValueError(f"{path}: written by another synthetic-world version; ground truth cannot be regenerated")
    return video


def load_clip(path: Path, frames: slice, need_video: bool) -> tuple[np.ndarray, np.ndarray, Any | None]:
    """Frames (T, H, W, 3) uint8 of ``path`` (video file, frame folder or synthetic-world video) selected by the
    slice ``frames``, their indices, and (when ``need_video``) the synthetic video behind ``path``."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such video or folder")
    video = synth_video(path.resolve()) if need_video else None
    if need_video and video is None:
        raise ValueError(
            f"{path}: the gt tracker needs a video of a `motionrep synth` folder "
            "(DIR/<split>/frames/<name> or DIR/<split>/videos/<name>.mp4)"
        )
    if need_video:
        source = None
        count = len(video.frames)
    elif path.is_dir():
        source = FrameFolderSource(path)
        count = source.num_frames
    elif path.suffix.lower() in VIDEO_EXTENSIONS:
        source = PyAVSource(path)
        count = source.num_frames
    else:
        raise ValueError(f"{path}: not a video ({', '.join(VIDEO_EXTENSIONS)}) or a folder of frames")
    indices = np.arange(count)[frames]
    try:
        if len(indices) == 0:
            raise ValueError(f"{path}: no frames selected (the video has {count})")
        clip = video.frames[indices] if source is None else source.read(indices)
    finally:
        if source is not None:
            source.close()
    return np.ascontiguousarray(clip), indices, video


def draw_tracks(path: Path, frames: np.ndarray, tracks: np.ndarray, visible: np.ndarray) -> None:
    """Tracks over the first frame (whole trajectories) and the last frame (final positions); visible parts solid."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    t, n = visible.shape
    colours = colormaps["hsv"](np.linspace(0, 1, n, endpoint=False))
    segments = np.stack([tracks[:-1], tracks[1:]], axis=2).transpose(1, 0, 2, 3).reshape(-1, 2, 2)  # point-major
    seg_colours = np.repeat(colours, t - 1, axis=0)
    seg_colours[:, 3] = np.where(visible[1:].T.reshape(-1), 1.0, 0.15)
    h, w = frames.shape[1:3]
    fig = Figure(figsize=(10, 5 * h / w + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, frame, title in zip(axes, (frames[0], frames[-1]), ("first frame", "last frame"), strict=True):
        ax.imshow(frame, extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="nearest")
        ax.set_title(title)
        ax.set_axis_off()
    axes[0].add_collection(LineCollection(segments, colors=seg_colours, linewidths=1.0))
    axes[0].scatter(tracks[0, :, 0], tracks[0, :, 1], s=6, c=colours)
    last_vis = visible[-1]
    axes[1].scatter(tracks[-1, last_vis, 0], tracks[-1, last_vis, 1], s=8, c=colours[last_vis])
    axes[1].scatter(tracks[-1, ~last_vis, 0], tracks[-1, ~last_vis, 1], s=8, c=colours[~last_vis], marker="x")
    for ax in axes:
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
    fig.suptitle(f"{n} tracks over {t} frames; faint / x = not visible")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def run(
    video: Path,
    tracker_name: str,
    grid: int,
    out: Path,
    figure: Path | None = None,
    step: int = 1,
    max_frames: int | None = None,
    tracker_cfg: dict[str, Any] | None = None,
    chain: str = "all",
) -> dict[str, Any]:
    """Track a ``grid`` x ``grid`` query grid through every ``step``-th frame of ``video`` (at most ``max_frames``);
    write ``out`` (and ``figure``); return a summary.

    ``chain="all"`` lets the flow trackers (dis, lk) step over every raw frame in between and keeps every ``step``-th
    row (more robust to large displacements); ``"sampled"`` tracks the sampled frames directly.
    """
    from motionrep.tracking.base import TRACKERS, get_tracker, grid_queries, save_tracks

    if tracker_name not in TRACKERS:
        raise ValueError(f"unknown tracker {tracker_name!r}; choose one of {', '.join(TRACKERS)}")
    if out.suffix != ".npz":
        raise ValueError(f"--out must be an .npz file, got {out}")
    if figure is not None and figure.suffix.lower() != ".png":
        raise ValueError(f"--figure must be a .png file, got {figure}")
    if step < 1 or grid < 1 or (max_frames is not None and max_frames < 1):
        raise ValueError("--step, --grid and --max-frames must be >= 1")
    if chain not in ("all", "sampled"):
        raise ValueError(f"--chain must be 'all' or 'sampled', got {chain!r}")
    dense = chain == "all" and tracker_name in ("dis", "lk") and step > 1
    stop = None if max_frames is None else (max_frames - 1) * step + 1
    frames, indices, synth = load_clip(video, slice(0, stop, 1 if dense else step), need_video=tracker_name == "gt")
    cfg = dict(tracker_cfg or {})
    if tracker_name in ("dis", "lk"):
        cfg["progress"] = True
    if tracker_name == "gt":
        cfg.update(video=synth, indices=indices)
    tracker = get_tracker(tracker_name, **cfg)
    h, w = frames.shape[1:3]
    queries = grid_queries(grid, w, h)
    start = time.perf_counter()
    tracks, visible = tracker(frames, queries)
    seconds = time.perf_counter() - start
    speed = tracks.shape[0] * tracks.shape[1] / max(seconds, 1e-9)  # point·frames actually tracked
    if dense:
        frames, tracks, visible = frames[::step], tracks[::step], visible[::step]
    save_tracks(out, tracks, visible)
    if figure is not None:
        draw_tracks(figure, frames, tracks, visible)
    return {
        "frames": int(tracks.shape[0]),
        "points": int(tracks.shape[1]),
        "visible": float(visible.mean()),
        "seconds": seconds,
        "point_frames_per_s": speed,
    }


def register(app: typer.Typer) -> None:
    @app.command()
    def track(
        video: Path = typer.Argument(..., help="A video file, a folder of frames, or a `motionrep synth` video."),
        tracker: str = typer.Option("dis", "--tracker", help="dis | lk | gt (synthetic world) | cotracker."),
        grid: int = typer.Option(16, "--grid", help="Query grid size G (G x G points on frame 0)."),
        out: Path = typer.Option(..., "--out", help="Output track file (.npz: tracks (T,N,2), visible (T,N))."),
        figure: Path | None = typer.Option(None, "--figure", help="Also draw the tracks to this PNG."),
        step: int = typer.Option(1, "--step", help="Use every STEP-th frame."),
        chain: str = typer.Option("all", "--chain", help="dis/lk with --step: chain over all raw frames or sampled."),
        max_frames: int | None = typer.Option(None, "--max-frames", help="Use at most this many frames."),
        checkpoint: Path | None = typer.Option(None, "--checkpoint", help="Local CoTracker checkpoint (cotracker)."),
        preset: str = typer.Option("medium", "--dis-preset", help="DIS preset: ultrafast | fast | medium."),
    ) -> None:
        """Track a grid of frame-0 points through a video and save the tracks."""
        cfg: dict[str, Any] = {}
        if tracker == "cotracker":
            cfg["checkpoint"] = checkpoint
        elif tracker == "dis":
            cfg["preset"] = preset
        try:
            summary = run(video, tracker, grid, out, figure, step, max_frames, cfg, chain)
        except (ValueError, FileNotFoundError, ImportError, VideoReadError) as err:
            typer.echo(f"Error: {err}", err=True)
            raise typer.Exit(code=2) from None
        typer.echo(
            f"{summary['points']} points x {summary['frames']} frames, {summary['visible']:.1%} visible, "
            f"{summary['point_frames_per_s']:.0f} point·frames/s -> {out}" + (f" (figure {figure})" if figure else "")
        )
