"""Training video layouts → lists of videos (:class:`Catalog` of :class:`VideoEntry`).

Every catalog lists files only (no decoding); an entry opens its :mod:`~motionrep.data.sources` backend on demand.
A root without any usable video raises :class:`DatasetLayoutError` naming the path and the expected layout.
``build_catalog(name, root, **options)`` selects a layout by name (see :data:`CATALOGS`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from motionrep.data.sources import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    FrameCache,
    FrameFolderSource,
    PyAVSource,
    SynthSource,
    VideoSource,
    list_images,
)

log = logging.getLogger(__name__)


class DatasetLayoutError(ValueError):
    """A dataset root holds no usable video in the expected layout."""


@dataclass(frozen=True)
class VideoEntry:
    """One video of a catalog: a file (``kind="video"``), a folder of frames (``"frames"``, files listed once) or a
    synthetic-world video (``"synth"``: ``world[index]``)."""

    name: str
    kind: str
    path: Path | None = None
    files: tuple[Path, ...] = ()
    label: str | None = None
    annotations: Path | None = None
    fps: float = 30.0
    world: Any = field(default=None, repr=False, compare=False)
    index: int = -1
    cache: FrameCache | None = field(default=None, repr=False, compare=False)

    def open(self, threads: int = 1) -> VideoSource:
        if self.kind == "video":
            return PyAVSource(self.path, threads=threads)
        if self.kind == "frames":
            return FrameFolderSource(self.path, self.files, fps=self.fps)
        if self.kind == "synth":
            return SynthSource(self.world, self.index, fps=self.fps, cache=self.cache)
        raise ValueError(f"unknown video entry kind {self.kind!r}")

    def annotation_files(self) -> list[Path]:
        """Per frame, the label PNG of the same stem in ``annotations`` (which need not all exist); ``[]`` without
        an annotation folder."""
        return [] if self.annotations is None else [self.annotations / f"{f.stem}.png" for f in self.files]

    def describe(self) -> str:
        """The file or folder to name in messages."""
        return str(self.path) if self.path is not None else f"synthetic video {self.index}"


@dataclass
class Catalog(Sequence):
    """The videos of one dataset, with the root and the layout they were found in (for error messages)."""

    name: str
    root: Path | None
    layout: str
    entries: list[VideoEntry]

    def __post_init__(self) -> None:
        if not self.entries:
            raise DatasetLayoutError(f"no usable video found for {self.name} under {self.root}; expected {self.layout}")

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i):
        return self.entries[i]


def _require_dir(root: str | Path, name: str, layout: str) -> Path:
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetLayoutError(f"{name}: {path} is not a directory; expected {layout}")
    return path


def _video_files(folder: Path, recursive: bool = False) -> list[Path]:
    pattern = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in pattern if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)


def _video_entries(files: Sequence[Path], label: str | None = None) -> list[VideoEntry]:
    return [VideoEntry(name=p.stem, kind="video", path=p, label=label) for p in files]


def _frame_entries(folders: Sequence[Path], fps: float = 30.0, label: str | None = None) -> list[VideoEntry]:
    entries = []
    for folder in folders:
        files = list_images(folder)
        if files:
            entries.append(VideoEntry(folder.name, "frames", folder, tuple(files), label=label, fps=fps))
        else:
            log.warning("skipping %s: no %s frames", folder, "/".join(IMAGE_EXTENSIONS))
    return entries


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir())


def _first_existing(candidates: Sequence[Path]) -> Path | None:
    return next((c for c in candidates if c.is_dir()), None)


BDD_LAYOUT = "BDD100K videos: ROOT/videos/<split>/*.mov (or ROOT/<split>/*.mov, or the videos directly in ROOT)"


def bdd100k(root: str | Path, split: str = "train") -> Catalog:
    """BDD100K driving videos (``bdd100k_videos_<split>`` archives: one .mov per 40 s drive)."""
    base = _require_dir(root, "bdd100k", BDD_LAYOUT)
    folder = _first_existing([base / "videos" / split, base / split]) or base
    return Catalog("bdd100k", folder, BDD_LAYOUT, _video_entries(_video_files(folder)))


WT_LAYOUT = "Walking Tours: ROOT/<name>.mp4 video files, or pre-decoded frames ROOT/<name>/<frame>.png|jpg"


def walking_tours(root: str | Path, videos: Sequence[str] | None = None, fps: float = 30.0) -> Catalog:
    """Walking Tours, as video files or pre-decoded frame folders; ``videos`` keeps names containing any of the given
    strings (case-insensitive), e.g. ``["venice"]`` for Midway's WT-Venice."""
    base = _require_dir(root, "walking_tours", WT_LAYOUT)
    entries = _video_entries(_video_files(base)) + _frame_entries(_subdirs(base), fps=fps)
    if videos is not None:
        keys = [v.lower() for v in videos]
        entries = [e for e in entries if any(k in e.name.lower() for k in keys)]
    return Catalog("walking_tours", base, WT_LAYOUT, entries)


YTVOS_LAYOUT = "YouTube-VOS: ROOT/<split>/JPEGImages/<video>/<frame>.jpg (or ROOT/JPEGImages/<video>/<frame>.jpg)"


def youtube_vos(root: str | Path, split: str = "train", fps: float = 30.0) -> Catalog:
    """YouTube-VOS frame folders (``train``, ``valid``, or MoSiC's ``train_all_frames``)."""
    base = _require_dir(root, "youtube_vos", YTVOS_LAYOUT)
    folder = _first_existing([base / split / "JPEGImages", base / "JPEGImages"])
    if folder is None:
        raise DatasetLayoutError(f"youtube_vos: no JPEGImages folder under {base}; expected {YTVOS_LAYOUT}")
    return Catalog("youtube_vos", folder, YTVOS_LAYOUT, _frame_entries(_subdirs(folder), fps=fps))


DAVIS_LAYOUT = (
    "DAVIS-2017: ROOT/JPEGImages/<res>/<seq>/00000.jpg, ROOT/Annotations/<res>/<seq>/00000.png, "
    "ROOT/ImageSets/2017/<split>.txt"
)


def davis2017(root: str | Path, split: str = "train", resolution: str = "480p", fps: float = 24.0) -> Catalog:
    """DAVIS-2017 sequences of ``ImageSets/2017/<split>.txt``; each entry carries its annotation folder."""
    base = _require_dir(root, "davis2017", DAVIS_LAYOUT)
    split_file = base / "ImageSets" / "2017" / f"{split}.txt"
    if not split_file.is_file():
        raise DatasetLayoutError(f"davis2017: missing split file {split_file}; expected {DAVIS_LAYOUT}")
    names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    entries = []
    for name in names:
        folder = base / "JPEGImages" / resolution / name
        if not folder.is_dir():
            log.warning("davis2017: sequence %s listed in %s has no folder %s; skipped", name, split_file, folder)
            continue
        annotations = base / "Annotations" / resolution / name
        entries += [
            dataclasses.replace(entry, annotations=annotations if annotations.is_dir() else None)
            for entry in _frame_entries([folder], fps=fps)
        ]
    return Catalog("davis2017", base, DAVIS_LAYOUT, entries)


KINETICS_LAYOUT = (
    "Kinetics-style class folders: ROOT/[<split>/]<class>/<video>.mp4, or frames ROOT/[<split>/]<class>/<video>/*.jpg"
)


def kinetics(root: str | Path, split: str | None = None, fps: float = 30.0) -> Catalog:
    """Class-per-folder video datasets (Kinetics, SSv2-style dumps); each entry's ``label`` is its class folder."""
    base = _require_dir(root, "kinetics", KINETICS_LAYOUT)
    folder = base / split if split is not None else base
    if not folder.is_dir():
        raise DatasetLayoutError(f"kinetics: missing split folder {folder}; expected {KINETICS_LAYOUT}")
    entries = []
    for class_dir in _subdirs(folder):
        entries += _video_entries(_video_files(class_dir), label=class_dir.name)
        entries += _frame_entries(_subdirs(class_dir), fps=fps, label=class_dir.name)
    return Catalog("kinetics", folder, KINETICS_LAYOUT, entries)


FOLDER_LAYOUT = f"any folder holding video files ({', '.join(VIDEO_EXTENSIONS)}) at any depth"


def video_folder(root: str | Path) -> Catalog:
    """Every video file under ``root`` (recursively); names are paths relative to the root."""
    base = _require_dir(root, "video_folder", FOLDER_LAYOUT)
    entries = [
        VideoEntry(name=str(p.relative_to(base).with_suffix("")), kind="video", path=p)
        for p in _video_files(base, recursive=True)
    ]
    return Catalog("video_folder", base, FOLDER_LAYOUT, entries)


FRAMES_LAYOUT = "one folder of jpg/png frames per video: ROOT/<video>/<frame>.png|jpg"


def frame_folders(root: str | Path, fps: float = 30.0) -> Catalog:
    """Every sub-folder of ``root`` holding frames is a video (e.g. the ``S/frames`` folder of ``motionrep synth``)."""
    base = _require_dir(root, "frame_folders", FRAMES_LAYOUT)
    return Catalog("frame_folders", base, FRAMES_LAYOUT, _frame_entries(_subdirs(base), fps=fps))


SYNTH_LAYOUT = "a synthetic world (motionrep.data.synth.SynthWorld) with at least one video"


def synthetic(world: Any, fps: float = 30.0, cache_mb: float = 256.0) -> Catalog:
    """The videos of an in-memory synthetic world (anything with ``len()`` and ``world[i].frames``).

    Rendered frames are kept in a per-process cache of ``cache_mb`` MiB (0 disables it), so revisited videos are
    not rendered again.
    """
    cache = FrameCache(int(cache_mb * 2**20)) if cache_mb > 0 else None
    entries = [
        VideoEntry(f"synth-{i:06d}", "synth", world=world, index=i, fps=fps, cache=cache) for i in range(len(world))
    ]
    return Catalog("synthetic", None, SYNTH_LAYOUT, entries)


CATALOGS: dict[str, Callable[..., Catalog]] = {
    "bdd100k": bdd100k,
    "walking_tours": walking_tours,
    "youtube_vos": youtube_vos,
    "davis2017": davis2017,
    "kinetics": kinetics,
    "video_folder": video_folder,
    "frame_folders": frame_folders,
}


def synthetic_world(
    preset: str = "tiny", split: str = "train", seed: int = 0, num_videos: int | None = None, cache_mb: float = 256.0
) -> Catalog:
    """The catalog of a freshly configured synthetic world (``motionrep.data.synth``)."""
    from motionrep.data.synth import SynthWorld, synth_preset

    return synthetic(SynthWorld(synth_preset(preset), split, seed, num_videos), cache_mb=cache_mb)


def build_catalog(name: str, root: str | Path | None = None, **options: Any) -> Catalog:
    """The catalog of the file layout ``name`` at ``root``; ``"synthetic"`` takes the options of
    :func:`synthetic_world` and no root."""
    if name == "synthetic":
        return synthetic_world(**options)
    if root is None:
        raise ValueError(f"dataset layout {name!r} needs a root path")
    if name not in CATALOGS:
        raise ValueError(f"unknown dataset layout {name!r}; choose one of {sorted(CATALOGS)} (or 'synthetic')")
    return CATALOGS[name](root, **options)
