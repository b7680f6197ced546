"""Writing a synthetic split to disk in the documented layout, and reading it back.

Layout under ``DIR`` (one ``manifest.json`` for all splits; names are ``<split>_<index:05d>``)::

    manifest.json                      classes, palette, and per split: config, seed, format, video names
    S/frames/<name>/00000.png          RGB frames (format "frames"), or S/videos/<name>.mp4 (H.264, yuv420p)
    S/Annotations/<name>/00000.png     semantic ids, uint8 palette PNG
    S/Instances/<name>/00000.png       instance ids (0 = stuff), uint8 or uint16 grey PNG
    S/Flow/<name>/00000.flo            forward flow t -> t+1 (Middlebury .flo), T-1 files
    S/FlowBwd/<name>/00000.flo         backward flow t+1 -> t, T-1 files
    S/FlowValid/<name>/00000.png       0/255: the point is visible in frames t and t+1
    S/Tracks/<name>.npz                tracks (T, N, 2) float32 (x, y), visible (T, N) bool: query grid on frame 0
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from motionrep.data import flowio
from motionrep.data.synth_render import SynthVideo
from motionrep.data.synth_scene import (
    CLASS_NAMES,
    IGNORE_INDEX,
    NUM_STUFF,
    PALETTE,
    SYNTH_VERSION,
    SynthConfig,
    sample_scene,
    scene_rng,
)

FORMATS = ("frames", "mp4")
MANIFEST = "manifest.json"


def _png(t: int) -> str:
    return f"{t:05d}.png"


def _write_mp4(path: Path, frames: np.ndarray, fps: int) -> None:
    import av

    _, h, w, _ = frames.shape
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": "17"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _read_mp4(path: Path) -> np.ndarray:
    import av

    try:
        with av.open(str(path)) as container:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    except (av.error.FFmpegError, ValueError) as err:
        raise ValueError(f"{path}: unreadable video ({err})") from err


def write_video(root: Path, video: SynthVideo, fmt: str = "frames", fps: int = 10) -> None:
    """Write one clip's files under the split directory ``root``."""
    name = video.name
    dirs = {key: root / key / name for key in ("Annotations", "Instances", "Flow", "FlowBwd", "FlowValid")}
    if fmt == "frames":
        dirs["frames"] = root / "frames" / name
    for d in [*dirs.values(), root / "Tracks"] + ([root / "videos"] if fmt == "mp4" else []):
        d.mkdir(parents=True, exist_ok=True)
    if fmt == "mp4":
        _write_mp4(root / "videos" / f"{name}.mp4", video.frames, fps)
    for t in range(len(video.frames)):
        if fmt == "frames":
            Image.fromarray(video.frames[t]).save(dirs["frames"] / _png(t))
        flowio.write_label_png(dirs["Annotations"] / _png(t), video.semantic[t], PALETTE)
        flowio.write_label_png(dirs["Instances"] / _png(t), video.instance[t])
    for t in range(len(video.flow)):
        flowio.write_flo(dirs["Flow"] / f"{t:05d}.flo", video.flow[t])
        flowio.write_flo(dirs["FlowBwd"] / f"{t:05d}.flo", video.flow_bwd[t])
        flowio.write_mask_png(dirs["FlowValid"] / _png(t), video.valid[t])
    np.savez_compressed(root / "Tracks" / f"{name}.npz", tracks=video.tracks, visible=video.visible)


def _read_manifest(out: Path) -> dict:
    path = out / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{out}: no {MANIFEST}; not a synthetic-world folder (write one with `motionrep synth`)"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: corrupt manifest ({err})") from err


def write_split(
    world,
    out_dir: str | Path,
    fmt: str = "frames",
    fps: int = 10,
    progress: bool = True,
    on_video: Callable[[SynthVideo], None] | None = None,
) -> Path:
    """Write every clip of ``world`` (a :class:`~motionrep.data.synth.SynthWorld`) under ``out_dir/<split>``.

    Adds (or replaces) the split's entry in ``out_dir/manifest.json`` and returns the manifest path. ``on_video`` is
    called with each clip after it is written (e.g. to gather statistics without rendering twice).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    h, w = world.config.hw
    if fmt == "mp4" and (h % 2 or w % 2):
        raise ValueError(f"mp4 (yuv420p) needs an even frame size, got {h}x{w}; use --format frames")
    out = Path(out_dir)
    root = out / world.split
    root.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(out) if (out / MANIFEST).exists() else {}
    names = []
    for i in tqdm(range(len(world)), desc=f"synth {world.split}", unit="video", disable=None if progress else True):
        video = world[i]
        write_video(root, video, fmt, fps)
        names.append(video.name)
        if on_video is not None:
            on_video(video)
    manifest.update(
        generator="motionrep.synth",
        version=SYNTH_VERSION,
        classes=CLASS_NAMES,
        num_stuff=NUM_STUFF,
        palette=PALETTE.tolist(),
        ignore_index=IGNORE_INDEX,
    )
    manifest.setdefault("splits", {})[world.split] = dict(
        config=world.config.to_dict(), seed=world.seed, format=fmt, fps=fps, videos=names
    )
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, out / MANIFEST)
    return out / MANIFEST


class SynthSplit(Sequence):
    """A split read from a ``motionrep synth`` folder; items equal the in-memory :class:`SynthVideo` clips.

    The manifest decides which files are read (its video names, and T frames per video from its config). When the
    files come from this generator version, each item also carries its scene, so ``track()`` works.
    """

    def __init__(self, out_dir: str | Path, split: str):
        self.out = Path(out_dir)
        manifest = _read_manifest(self.out)
        splits = manifest.get("splits", {})
        if split not in splits:
            raise ValueError(f"{self.out}: no split {split!r} in {MANIFEST}; available: {sorted(splits)}")
        entry = splits[split]
        self.split, self.root = split, self.out / split
        try:
            self.names: list[str] = list(entry["videos"])
            self.format: str = entry["format"]
            self.seed: int = int(entry["seed"])
            self.config = SynthConfig.from_dict(entry["config"])
            self.classes: list[str] = list(manifest["classes"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{self.out / MANIFEST}: malformed entry for split {split!r} ({err!r})") from err
        if self.format not in FORMATS:
            raise ValueError(f"{self.out / MANIFEST}: unknown format {self.format!r} for split {split!r}")
        self.same_generator = manifest.get("version") == SYNTH_VERSION and self.classes == CLASS_NAMES

    def __len__(self) -> int:
        return len(self.names)

    @staticmethod
    def _stack(folder: Path, read: Callable[[Path], np.ndarray], count: int, suffix: str = ".png") -> np.ndarray:
        paths = [folder / f"{t:05d}{suffix}" for t in range(count)]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{missing[0]}: missing ({len(missing)} of the {count} files expected in {folder})")
        return np.stack([read(p) for p in paths])

    def _frames(self, name: str) -> np.ndarray:
        t_count = self.config.frames
        if self.format == "frames":
            return self._stack(self.root / "frames" / name, lambda p: np.asarray(Image.open(p).convert("RGB")), t_count)
        frames = _read_mp4(self.root / "videos" / f"{name}.mp4")
        if len(frames) != t_count:
            raise ValueError(f"{self.root / 'videos' / name}.mp4: {len(frames)} frames decoded, {t_count} expected")
        return frames

    def __getitem__(self, i: int) -> SynthVideo:  # type: ignore[override]
        name = self.names[i]
        t_count = self.config.frames
        with np.load(self.root / "Tracks" / f"{name}.npz") as npz:
            tracks, visible = npz["tracks"], npz["visible"]
        scene = None
        if self.same_generator:
            index = int(name.rsplit("_", 1)[1])
            scene = sample_scene(self.config, scene_rng(self.split, self.seed, index))
        return SynthVideo(
            name=name,
            frames=self._frames(name),
            semantic=self._stack(self.root / "Annotations" / name, flowio.read_label_png, t_count),
            instance=self._stack(self.root / "Instances" / name, flowio.read_label_png, t_count),
            flow=self._stack(self.root / "Flow" / name, flowio.read_flo, t_count - 1, ".flo"),
            flow_bwd=self._stack(self.root / "FlowBwd" / name, flowio.read_flo, t_count - 1, ".flo"),
            valid=self._stack(self.root / "FlowValid" / name, flowio.read_mask_png, t_count - 1),
            tracks=tracks,
            visible=visible,
            scene=scene,
        )


def load_split(out_dir: str | Path, split: str) -> SynthSplit:
    """Open split ``split`` of a ``motionrep synth`` folder (see the module docstring for the layout)."""
    return SynthSplit(out_dir, split)
