"""``motionrep synth``: write splits of the synthetic world (frames or mp4, labels, flow, masks, tracks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

SPLITS = ("train", "val", "test")


class SplitStats:
    """Counts and ground-truth statistics accumulated over synthetic clips (``SynthVideo``-like records)."""

    def __init__(self) -> None:
        self.videos = self.frames = self.pairs = 0
        self.flow_sum = self.occluded = self.left = 0.0
        self.classes: set[int] = set()

    def add(self, video) -> None:
        _, _, h, w = video.flow.shape
        x = np.arange(w)[None, :] + video.flow[:, 0]
        y = np.arange(h)[:, None] + video.flow[:, 1]
        inside = (x >= -0.5) & (x < w - 0.5) & (y >= -0.5) & (y < h - 0.5)
        self.videos += 1
        self.frames += len(video.frames)
        self.pairs += video.valid.size
        self.flow_sum += float(np.hypot(video.flow[:, 0], video.flow[:, 1]).sum())
        self.occluded += float((inside & ~video.valid).sum())
        self.left += float((~inside).sum())
        self.classes.update(np.unique(video.semantic).tolist())

    def result(self) -> dict:
        from motionrep.data.synth import CLASS_NAMES

        pairs = max(self.pairs, 1)
        return {
            "videos": self.videos,
            "frames": self.frames,
            "classes": [CLASS_NAMES[c] for c in sorted(self.classes)],
            "mean_flow_px": self.flow_sum / pairs,
            "occluded_fraction": self.occluded / pairs,
            "out_of_frame_fraction": self.left / pairs,
        }


def print_summary(stats: dict) -> None:
    typer.echo(f"videos: {stats['videos']}  frames: {stats['frames']}")
    typer.echo(f"classes present ({len(stats['classes'])}): {', '.join(stats['classes'])}")
    typer.echo(f"mean flow magnitude: {stats['mean_flow_px']:.3f} px/frame")
    typer.echo(
        f"occluded pixels (t -> t+1): {100 * stats['occluded_fraction']:.2f}%  "
        f"leaving the frame: {100 * stats['out_of_frame_fraction']:.2f}%"
    )


def generate(preset: str, splits: list[str], out: Path, videos: int | None, fmt: str, seed: int) -> dict:
    """Write ``splits`` of ``preset`` under ``out`` and return the statistics of all written clips."""
    from motionrep.data.synth import SynthWorld, synth_preset, write_split

    config = synth_preset(preset)
    stats = SplitStats()
    for split in splits:
        write_split(SynthWorld(config, split, seed, videos), out, fmt, on_video=stats.add)
    return stats.result()


def register(app: typer.Typer) -> None:
    @app.command()
    def synth(
        out: Path = typer.Option(..., "--out", help="Output folder: manifest.json and one folder per split."),
        preset: str = typer.Option(
            "tiny",
            "--preset",
            help="tiny (32x32x8), small (64x64x16), fast (small, faster motion), standard (128x128x24).",
        ),
        split: str = typer.Option("val", "--split", help="train, val, test, or all."),
        videos: int | None = typer.Option(None, "--videos", help="Videos per split (default: the preset's count)."),
        fmt: str = typer.Option("frames", "--format", help="frames (PNG per frame) or mp4 (H.264, yuv420p)."),
        seed: int = typer.Option(0, "--seed", help="World seed; videos are deterministic per (seed, split, index)."),
    ) -> None:
        """Generate the synthetic video world with exact labels, flow, valid masks and point tracks."""
        splits = list(SPLITS) if split == "all" else [split]
        try:
            if split != "all" and split not in SPLITS:
                raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)} or all")
            if videos is not None and videos < 1:
                raise ValueError(f"--videos must be >= 1, got {videos}")
            stats = generate(preset, splits, out, videos, fmt, seed)
        except (ValueError, OSError) as err:
            typer.echo(f"Error: {err}", err=True)
            raise typer.Exit(code=2) from None
        typer.echo(f"wrote {', '.join(splits)} to {out} ({fmt})")
        print_summary(stats)
