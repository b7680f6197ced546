"""Labelled evaluation data: in-memory containers and loaders for the real datasets in their on-disk layouts.

Containers (what every evaluation protocol consumes):

* :class:`SegSet` — images uint8 ``(N, 3, H, W)`` and labels int64 ``(N, H, W)`` (``ignore_index`` skipped);
* :class:`FlowSet` — frame pairs uint8 ``(N, 3, H, W)`` twice, flow float32 ``(N, 2, H, W)`` as (dx, dy) from the
  first frame to the second, validity bool ``(N, H, W)``;
* :class:`VideoSet` — clips, each frames uint8 ``(T, 3, H, W)`` with object masks int64 ``(T, H, W)`` (0 =
  background) and optionally point tracks ``(T, N, 2)`` (x, y) with visibility ``(T, N)``;
* :class:`EvalData` — the parts a suite provides (the protocols whose data are missing are skipped).

Loaders read Cityscapes, ADE20K, Pascal VOC 2012, BDD100K-seg, DAVIS-2017, FlyingChairs, MPI-Sintel and KITTI-2015
in their official on-disk layouts (:data:`LAYOUTS`), resize to a square evaluation size, and raise
:class:`~motionrep.data.catalog.DatasetLayoutError` naming the expected layout when a path is wrong. Each layout is
listed in one place: segmentation splits by :func:`seg_listing` (also behind the streamed paper protocols), flow
pairs by :mod:`motionrep.data.flow_datasets`, DAVIS sequences by :func:`motionrep.data.catalog.davis2017`.
:func:`load_suite` assembles the :class:`EvalData` of ``motionrep eval --suite <name> --data PATH``.
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from motionrep.data import catalog, flow_datasets, flowio
from motionrep.data.catalog import DAVIS_LAYOUT, DatasetLayoutError
from motionrep.data.flow_datasets import LAYOUTS as FLOW_LAYOUTS
from motionrep.data.flow_datasets import FlowPairs, read_image


class SegClasses:
    """Shared by segmentation containers and datasets: ``num_classes`` from ``class_names``, ``len()`` from
    ``images``."""

    images: Sized
    class_names: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class SegSet(SegClasses):
    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    ignore_index: int = 255

    def subset(self, idx: torch.Tensor | slice) -> SegSet:
        return SegSet(self.images[idx], self.labels[idx], self.class_names, self.ignore_index)


@dataclass
class FlowSet:
    image1: torch.Tensor
    image2: torch.Tensor
    flow: torch.Tensor
    valid: torch.Tensor

    def __len__(self) -> int:
        return len(self.image1)

    def subset(self, idx: torch.Tensor | slice) -> FlowSet:
        return FlowSet(self.image1[idx], self.image2[idx], self.flow[idx], self.valid[idx])


@dataclass
class Clip:
    frames: torch.Tensor
    masks: torch.Tensor
    tracks: torch.Tensor | None = None
    visible: torch.Tensor | None = None
    name: str = ""


@dataclass
class VideoSet:
    clips: list[Clip] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.clips)


@dataclass
class EvalData:
    """Everything the protocols read; parts a dataset does not provide are ``None`` (their protocols are skipped)."""

    name: str
    seg_train: SegSet | None = None
    seg_val: SegSet | None = None
    flow_train: FlowSet | None = None
    flow_val: FlowSet | None = None
    videos: VideoSet | None = None

    def supports(self, protocol: str) -> bool:
        needs = {
            "seg_linear": (self.seg_train, self.seg_val),
            "overcluster": (self.seg_val,),
            "incontext": (self.seg_train, self.seg_val),
            "propagation": (self.videos,),
            "flow_probe": (self.flow_train, self.flow_val),
            "flow_match": (self.flow_val,),
            "tracking": (self.videos,),
            "dis": (self.flow_val,),
            "zero_flow": (self.flow_val,),
        }[protocol]
        if protocol == "tracking" and self.videos is not None:
            return any(c.tracks is not None for c in self.videos.clips)
        return all(x is not None and len(x) > 0 for x in needs)


# ------------------------------------------------------------------------------------------- real dataset loaders

CITYSCAPES_CLASSES = [
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]  # fmt: skip
# Cityscapes labelIds of the 19 evaluated classes, in trainId order (every other id is ignored).
CITYSCAPES_EVAL_IDS = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]  # fmt: skip
ADE20K_NUM_CLASSES = 150

LAYOUTS = {
    "cityscapes": "ROOT/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png and "
    "ROOT/gtFine/<split>/<city>/<name>_gtFine_labelIds.png",
    "ade20k": "ROOT[/ADEChallengeData2016]/images/{training,validation}/*.jpg and "
    "annotations/{training,validation}/*.png",
    "voc": "ROOT[/VOCdevkit/VOC2012]/JPEGImages/<id>.jpg, SegmentationClass/<id>.png (SegmentationClassAug for "
    "trainaug), ImageSets/Segmentation/<split>.txt",
    "bdd100k": "ROOT/images/10k/<split>/*.jpg with ROOT/labels/sem_seg/masks/<split>/*.png, or "
    "ROOT/seg/images/<split>/*.jpg with ROOT/seg/labels/<split>/*_train_id.png",
    "davis": DAVIS_LAYOUT,
    "flyingchairs": FLOW_LAYOUTS["chairs"],
    "sintel": FLOW_LAYOUTS["sintel"],
    "kitti": FLOW_LAYOUTS["kitti"],
}


def _layout_error(name: str, root: Path, detail: str) -> DatasetLayoutError:
    return DatasetLayoutError(f"{name}: {detail} under {root}; expected layout: {LAYOUTS[name]}")


def _first_dir(name: str, root: Path, candidates: list[Path]) -> Path:
    for c in candidates:
        if c.is_dir():
            return c
    raise _layout_error(name, root, f"none of {[str(c.relative_to(root)) or '.' for c in candidates]} exists")


def _resize(x: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    return cv2.resize(x, (size, size), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


@dataclass(frozen=True)
class SegListing:
    """A segmentation split on disk: image / label-map file pairs, class names and the lookup table ``lut`` (256
    entries) from stored label values to class ids (255 = ignore)."""

    images: list[Path]
    labels: list[Path]
    class_names: list[str]
    lut: np.ndarray


def map_labels(raw: np.ndarray, lut: np.ndarray, path: Path) -> np.ndarray:
    """Stored label values → class ids through ``lut``; ``DatasetLayoutError`` naming ``path`` for values past it."""
    if raw.size and raw.max() >= len(lut):
        raise DatasetLayoutError(f"{path}: label id {raw.max()} outside the dataset's {len(lut)} raw ids")
    return lut[raw]


def _label_files(name: str, root: Path, images: list[Path], label_for) -> list[Path]:
    if not images:
        raise _layout_error(name, root, "no images found")
    labels = [label_for(img) for img in images]
    missing = next((i for i, lab in enumerate(labels) if not lab.is_file()), None)
    if missing is not None:
        raise _layout_error(name, root, f"label file {labels[missing]} missing for image {images[missing].name}")
    return labels


def _cityscapes_files(root: Path, split: str) -> SegListing:
    img_dir = _first_dir("cityscapes", root, [root / "leftImg8bit" / split])
    images = sorted(img_dir.glob("*/*_leftImg8bit.png"))
    labels = _label_files(
        "cityscapes",
        root,
        images,
        lambda p: root / "gtFine" / split / p.parent.name / p.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png"),
    )
    lut = np.full(256, 255, np.uint8)
    lut[CITYSCAPES_EVAL_IDS] = np.arange(len(CITYSCAPES_EVAL_IDS))
    return SegListing(images, labels, CITYSCAPES_CLASSES, lut)


def _ade20k_files(root: Path, split: str) -> SegListing:
    base = _first_dir("ade20k", root, [root / "ADEChallengeData2016", root])
    folder = {"train": "training", "val": "validation"}.get(split, split)
    images = sorted(_first_dir("ade20k", root, [base / "images" / folder]).glob("*.jpg"))
    labels = _label_files("ade20k", root, images, lambda p: base / "annotations" / folder / f"{p.stem}.png")
    lut = np.full(256, 255, np.uint8)  # 0 ("other") and values past the classes are ignored
    lut[1 : ADE20K_NUM_CLASSES + 1] = np.arange(ADE20K_NUM_CLASSES)
    return SegListing(images, labels, [f"ade{i:03d}" for i in range(1, ADE20K_NUM_CLASSES + 1)], lut)


def _voc_files(root: Path, split: str) -> SegListing:
    candidates = (root / "VOCdevkit" / "VOC2012", root / "VOC2012", root)
    base = next((b for b in candidates if (b / "JPEGImages").is_dir()), None)
    if base is None:
        raise _layout_error("voc", root, "no JPEGImages folder")
    listing = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise _layout_error("voc", root, f"split file {listing} missing")
    ids = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()]
    images = [base / "JPEGImages" / f"{i}.jpg" for i in ids]
    missing = next((p for p in images if not p.is_file()), None)
    if missing is not None:
        raise _layout_error("voc", root, f"image {missing} listed in {listing.name} missing")
    label_dir = base / ("SegmentationClassAug" if split == "trainaug" else "SegmentationClass")
    labels = _label_files("voc", root, images, lambda p: label_dir / f"{p.stem}.png")
    return SegListing(images, labels, VOC_CLASSES, np.arange(256, dtype=np.uint8))


def _bdd100k_files(root: Path, split: str) -> SegListing:
    layouts = [
        (root / "images" / "10k" / split, lambda p: root / "labels" / "sem_seg" / "masks" / split / f"{p.stem}.png"),
        (root / "seg" / "images" / split, lambda p: root / "seg" / "labels" / split / f"{p.stem}_train_id.png"),
    ]
    for img_dir, label_for in layouts:
        images = sorted(img_dir.glob("*.jpg"))
        if images:
            labels = _label_files("bdd100k", root, images, label_for)
            return SegListing(images, labels, CITYSCAPES_CLASSES, np.arange(256, dtype=np.uint8))
    raise _layout_error("bdd100k", root, f"no images for split {split!r}")


SEG_LISTINGS = {"cityscapes": _cityscapes_files, "ade20k": _ade20k_files, "voc": _voc_files, "bdd100k": _bdd100k_files}


def seg_listing(name: str, root: str | Path, split: str) -> SegListing:
    """The files of a segmentation split in its official layout (:data:`LAYOUTS`): ``cityscapes`` (19 trainIds,
    other labelIds ignored), ``ade20k`` (``train``/``training``, ``val``/``validation``; 150 classes = file value
    - 1, 0 ignored), ``voc`` (21 classes; ``trainaug`` reads ``SegmentationClassAug``) or ``bdd100k`` (19 ids)."""
    if name not in SEG_LISTINGS:
        raise ValueError(f"unknown segmentation dataset {name!r}; choose from {', '.join(SEG_LISTINGS)}")
    root = Path(root)
    if not root.is_dir():
        raise _layout_error(name, root, "the dataset root is not a directory")
    return SEG_LISTINGS[name](root, split)


def load_seg(name: str, root: str | Path, split: str, size: int = 224, max_images: int = 2000) -> SegSet:
    """The first ``max_images`` pairs of a segmentation split (:func:`seg_listing`) in memory, resized to
    ``size x size`` (images: area, labels: nearest)."""
    listing = seg_listing(name, root, split)
    pairs = list(zip(listing.images, listing.labels, strict=True))[:max_images]
    images = np.empty((len(pairs), size, size, 3), np.uint8)
    labels = np.empty((len(pairs), size, size), np.uint8)
    for i, (img_path, lab_path) in enumerate(tqdm(pairs, desc=f"{name} {split}", leave=False, disable=None)):
        images[i] = _resize(read_image(img_path).permute(1, 2, 0).numpy(), size, nearest=False)
        labels[i] = _resize(map_labels(flowio.read_label_png(lab_path), listing.lut, lab_path), size, nearest=True)
    return SegSet(
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels).long(), listing.class_names
    )


def davis2017(
    root: str | Path, split: str = "val", size: int = 224, max_images: int = 2000, resolution: str = "480p"
) -> VideoSet:
    """DAVIS-2017 semi-supervised VOS (sequences of :func:`motionrep.data.catalog.davis2017`): clips with object-id
    masks (palette indices; 0 = background, 255 ignored as background). ``max_images`` bounds the total number of
    frames read."""
    clips, budget = [], max_images
    for entry in catalog.davis2017(root, split, resolution).entries:
        frames, masks = list(entry.files[:budget]), entry.annotation_files()[:budget]
        if not masks or not masks[0].is_file():
            raise _layout_error("davis", Path(root), f"first-frame annotation of sequence {entry.name!r} missing")
        imgs = np.stack([_resize(read_image(f).permute(1, 2, 0).numpy(), size, nearest=False) for f in frames])
        labs = np.stack(
            [
                _resize(flowio.read_label_png(m), size, nearest=True) if m.is_file() else np.zeros((size, size))
                for m in masks
            ]
        ).astype(np.int64)
        labs[labs == 255] = 0
        clips.append(
            Clip(torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labs), name=entry.name)
        )
        budget -= len(frames)
        if budget <= 0:
            break
    return VideoSet(clips)


def _flow_set(pairs: FlowPairs, size: int, max_images: int, desc: str) -> FlowSet:
    """The first ``max_images`` pairs resized to ``size x size``: images by area, flow and validity by nearest
    neighbour (so sparse KITTI flow stays exact), flow vectors scaled."""
    n = min(len(pairs), max_images)
    i1, i2 = np.empty((n, size, size, 3), np.uint8), np.empty((n, size, size, 3), np.uint8)
    flows, valids = np.empty((n, 2, size, size), np.float32), np.empty((n, size, size), bool)
    for k in tqdm(range(n), desc=desc, leave=False, disable=None):
        img1, img2, flow, valid = pairs[k]
        i1[k] = _resize(img1.permute(1, 2, 0).numpy(), size, nearest=False)
        i2[k] = _resize(img2.permute(1, 2, 0).numpy(), size, nearest=False)
        h, w = flow.shape[1:]
        scale = np.array([size / w, size / h], np.float32)[:, None, None]
        flows[k] = np.stack([_resize(c, size, nearest=True) for c in flow.numpy()]) * scale
        valids[k] = _resize(valid.numpy().astype(np.uint8), size, nearest=True) > 0
    t = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return FlowSet(t(i1), t(i2), torch.from_numpy(flows), torch.from_numpy(valids))


def _split_pairs(pairs: FlowPairs, is_val, split: str) -> FlowPairs:
    """The pairs of ``split`` (``train`` / ``val``) by the predicate ``is_val(first image path)``."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be train or val, got {split!r}")
    return FlowPairs(pairs.name, [t for t in pairs.triples if is_val(t[0]) == (split == "val")])


def flying_chairs(root: str | Path, split: str, size: int = 224, max_images: int = 2000) -> FlowSet:
    """FlyingChairs with the official train/val split file (1 = train, 2 = val)."""
    return _flow_set(flow_datasets.flying_chairs(root, split), size, max_images, f"flyingchairs {split}")


def sintel(
    root: str | Path, split: str, size: int = 224, max_images: int = 2000, render_pass: str = "clean"
) -> FlowSet:
    """MPI-Sintel training set (the only one with flow); scenes in sorted order, every 4th scene (index % 4 == 3)
    is the validation split. Pixels marked in ``invalid/`` are not scored."""
    pairs = flow_datasets.sintel(root, "training", (render_pass,))
    val_scenes = sorted({t[0].parent.name for t in pairs.triples})[3::4]
    pairs = _split_pairs(pairs, lambda p: p.parent.name in val_scenes, split)
    return _flow_set(pairs, size, max_images, f"sintel {split}")


def kitti2015(root: str | Path, split: str, size: int = 224, max_images: int = 2000) -> FlowSet:
    """KITTI-2015 flow (training set with ground truth, ``flow_occ``); pairs 160-199 form the validation split."""
    pairs = _split_pairs(flow_datasets.kitti2015(root), lambda p: int(p.name.split("_")[0]) >= 160, split)
    return _flow_set(pairs, size, max_images, f"kitti {split}")


FLOW_LOADERS = {"flyingchairs": flying_chairs, "sintel": sintel, "kitti": kitti2015}
SUITES = (*SEG_LISTINGS, "davis", *FLOW_LOADERS)


def load_suite(name: str, root: str | Path, size: int = 224, max_images: int = 2000) -> EvalData:
    """Evaluation data of a real dataset: train/val images (segmentation), train/val pairs (flow) or val clips
    (DAVIS label propagation), resized to ``size x size``."""
    root = Path(root)
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose synth or one of {', '.join(SUITES)}")
    if not root.is_dir():
        raise _layout_error(name, root, "the dataset root is not a directory")
    if name == "davis":
        return EvalData(name, videos=davis2017(root, "val", size, max_images))
    if name in SEG_LISTINGS:
        train, val = (load_seg(name, root, split, size, max_images) for split in ("train", "val"))
        return EvalData(name, seg_train=train, seg_val=val)
    train, val = (FLOW_LOADERS[name](root, split, size, max_images) for split in ("train", "val"))
    return EvalData(name, flow_train=train, flow_val=val)
