"""``motionrep synth``: write splits of the synthetic world (frames or mp4, labels, flow, masks, tracks)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import typer

SPLITS = ("train", "val", "test")


def summarise(videos: Iterable) -> dict:
    """Counts and ground-truth statistics of synthetic clips (``SynthVideo``-like records)."""
    from motionrep.data.synth import CLASS_NAMES

    count, frames, magnitude, occluded, left, pairs = 0, 0, 0.0, 0.0, 0.0, 0
    classes: set[int] = set()
    for v in videos:
        count += 1
        frames += len(v.frames)
        classes.update(np.unique(v.semantic).tolist())
        _, _, h, w = v.flow.shape
        x = np.arange(w)[None, :] + v.flow[:, 0]
        y = np.arange(h)[:, None] + v.flow[:, 1]
        inside = (x >= -0.5) & (x < w - 0.5) & (y >= -0.5) & (y < h - 0.5)
        magnitude += float(np.hypot(v.flow[:, 0], v.flow[:, 1]).sum())
        occluded += float((inside & ~v.valid).sum())
        left += float((~inside).sum())
        pairs += v.valid.size
    pairs = max(pairs, 1)
    return {
        "videos": count,
        "frames": frames,
        "classes": [CLASS_NAMES[c] for c in sorted(classes)],
        "mean_flow_px": magnitude / pairs,
        "occluded_fraction": occluded / pairs,
        "out_of_frame_fraction": left / pairs,
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
    """Write ``splits`` of ``preset`` under ``out`` and return the summary of the last split (read back from disk)."""
    from motionrep.data.synth import SynthWorld, load_split, synth_preset, write_split

    config = synth_preset(preset)
    for split in splits:
        write_split(SynthWorld(config, split, seed, videos), out, fmt)
    return summarise(load_split(out, splits[-1]))


def register(app: typer.Typer) -> None:
    @app.command()
    def synth(
        out: Path = typer.Option(..., "--out", help="Output folder: manifest.json and one folder per split."),
        preset: str = typer.Option("tiny", "--preset", help="tiny (32x32x8), small (64x64x16), standard (128x128x24)."),
        split: str = typer.Option("val", "--split", help="train, val, test, or all."),
        videos: int | None = typer.Option(None, "--videos", help="Videos per split [default: the preset's count]."),
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
