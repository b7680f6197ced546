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
:class:`~motionrep.data.catalog.DatasetLayoutError` naming the expected layout when a path is wrong.
:func:`load_suite` assembles the :class:`EvalData` of ``motionrep eval --suite <name> --data PATH``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from motionrep.data import flowio
from motionrep.data.catalog import DatasetLayoutError


@dataclass
class SegSet:
    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    ignore_index: int = 255

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images)

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
    "cityscapes": "ROOT/leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png and "
    "ROOT/gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png",
    "ade20k": "ROOT[/ADEChallengeData2016]/images/{training,validation}/*.jpg and "
    "annotations/{training,validation}/*.png",
    "voc": "ROOT[/VOCdevkit/VOC2012]/JPEGImages/*.jpg, SegmentationClass/*.png, ImageSets/Segmentation/{train,val}.txt",
    "bdd100k": "ROOT/images/10k/{train,val}/*.jpg with ROOT/labels/sem_seg/masks/{train,val}/*.png, or "
    "ROOT/seg/images/{train,val}/*.jpg with ROOT/seg/labels/{train,val}/*_train_id.png",
    "davis": "ROOT/JPEGImages/480p/<seq>/00000.jpg, ROOT/Annotations/480p/<seq>/00000.png, ROOT/ImageSets/2017/val.txt",
    "flyingchairs": "ROOT[/FlyingChairs_release]/data/00001_img1.ppm, 00001_img2.ppm, 00001_flow.flo, and "
    "FlyingChairs_train_val.txt (1 = train, 2 = val) in ROOT or beside data/",
    "sintel": "ROOT/training/{clean,final}/<scene>/frame_0001.png and ROOT/training/flow/<scene>/frame_0001.flo "
    "(optional ROOT/training/invalid/<scene>/frame_0001.png)",
    "kitti": "ROOT/training/image_2/000000_10.png, 000000_11.png and ROOT/training/flow_occ/000000_10.png",
}


def _layout_error(name: str, root: Path, detail: str) -> DatasetLayoutError:
    return DatasetLayoutError(f"{name}: {detail} under {root}; expected layout: {LAYOUTS[name]}")


def _first_dir(name: str, root: Path, candidates: list[Path]) -> Path:
    for c in candidates:
        if c.is_dir():
            return c
    raise _layout_error(name, root, f"none of {[str(c.relative_to(root)) or '.' for c in candidates]} exists")


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _resize(x: np.ndarray, size: int, nearest: bool) -> np.ndarray:
    return cv2.resize(x, (size, size), interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


def _seg_set(pairs: list[tuple[Path, Path]], lut: np.ndarray, names: list[str], size: int, desc: str) -> SegSet:
    """Read image / label-PNG pairs, map raw label ids through ``lut`` (256 or 65536 entries, 255 = ignore), and
    resize to ``size x size`` (images: area, labels: nearest)."""
    images = np.empty((len(pairs), size, size, 3), np.uint8)
    labels = np.empty((len(pairs), size, size), np.uint8)
    for i, (img_path, lab_path) in enumerate(tqdm(pairs, desc=desc, leave=False, disable=None)):
        images[i] = _resize(_read_rgb(img_path), size, nearest=False)
        raw = flowio.read_label_png(lab_path)
        if raw.max() >= len(lut):
            raise DatasetLayoutError(f"{lab_path}: label id {raw.max()} outside the dataset's {len(lut)} raw ids")
        labels[i] = _resize(lut[raw], size, nearest=True)
    return SegSet(
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels).long(), names, 255
    )


def _pairs(name: str, root: Path, images: list[Path], label_for, max_images: int) -> list[tuple[Path, Path]]:
    if not images:
        raise _layout_error(name, root, "no images found")
    out = []
    for img in images[:max_images]:
        lab = label_for(img)
        if not lab.is_file():
            raise _layout_error(name, root, f"label file {lab} missing for image {img.name}")
        out.append((img, lab))
    return out


def cityscapes(root: str | Path, split: str, size: int = 224, max_images: int = 2000) -> SegSet:
    """Cityscapes fine annotations: 19 classes (trainIds), every other labelId ignored."""
    root = Path(root)
    img_dir = _first_dir("cityscapes", root, [root / "leftImg8bit" / split])
    lut = np.full(256, 255, np.uint8)
    lut[CITYSCAPES_EVAL_IDS] = np.arange(len(CITYSCAPES_EVAL_IDS))

    def label_for(img: Path) -> Path:
        stem = img.name.replace("_leftImg8bit.png", "")
        return root / "gtFine" / split / img.parent.name / f"{stem}_gtFine_labelIds.png"

    pairs = _pairs("cityscapes", root, sorted(img_dir.glob("*/*_leftImg8bit.png")), label_for, max_images)
    return _seg_set(pairs, lut, CITYSCAPES_CLASSES, size, f"cityscapes {split}")


def ade20k(root: str | Path, split: str, size: int = 224, max_images: int = 2000) -> SegSet:
    """ADE20K SceneParsing: 150 classes (file value - 1); value 0 ("other") ignored."""
    root = Path(root)
    base = _first_dir("ade20k", root, [root / "ADEChallengeData2016", root])
    folder = {"train": "training", "val": "validation"}.get(split, split)
    img_dir = _first_dir("ade20k", root, [base / "images" / folder])
    lut = np.concatenate([[255], np.arange(ADE20K_NUM_CLASSES), np.full(256 - 1 - ADE20K_NUM_CLASSES, 255)])
    pairs = _pairs(
        "ade20k",
        root,
        sorted(img_dir.glob("*.jpg")),
        lambda img: base / "annotations" / folder / f"{img.stem}.png",
        max_images,
    )
    names = [f"ade{i:03d}" for i in range(1, ADE20K_NUM_CLASSES + 1)]
    return _seg_set(pairs, lut.astype(np.uint8), names, size, f"ade20k {split}")


def voc(root: str | Path, split: str, size: int = 224, max_images: int = 2000) -> SegSet:
    """Pascal VOC 2012 segmentation: 21 classes, 255 (object boundaries) ignored."""
    root = Path(root)
    base = _first_dir("voc", root, [root / "VOCdevkit" / "VOC2012", root / "VOC2012", root])
    listing = base / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise _layout_error("voc", root, f"split file {listing} missing")
    ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    images = [base / "JPEGImages" / f"{i}.jpg" for i in ids]
    missing = [p for p in images if not p.is_file()]
    if missing:
        raise _layout_error("voc", root, f"image {missing[0]} listed in {listing.name} missing")
    lut = np.arange(256).astype(np.uint8)
    pairs = _pairs("voc", root, images, lambda img: base / "SegmentationClass" / f"{img.stem}.png", max_images)
    return _seg_set(pairs, lut, VOC_CLASSES, size, f"voc {split}")


def bdd100k(root: str | Path, split: str, size: int = 224, max_images: int = 2000) -> SegSet:
    """BDD100K semantic segmentation (10k images): the 19 Cityscapes classes as train ids, 255 ignored."""
    root = Path(root)
    layouts = [
        (
            root / "images" / "10k" / split,
            lambda img: root / "labels" / "sem_seg" / "masks" / split / f"{img.stem}.png",
        ),
        (root / "seg" / "images" / split, lambda img: root / "seg" / "labels" / split / f"{img.stem}_train_id.png"),
    ]
    for img_dir, label_for in layouts:
        if img_dir.is_dir():
            pairs = _pairs("bdd100k", root, sorted(img_dir.glob("*.jpg")), label_for, max_images)
            return _seg_set(pairs, np.arange(256).astype(np.uint8), CITYSCAPES_CLASSES, size, f"bdd100k {split}")
    raise _layout_error("bdd100k", root, f"no image folder for split {split!r}")


def davis2017(
    root: str | Path, split: str = "val", size: int = 224, max_images: int = 2000, resolution: str = "480p"
) -> VideoSet:
    """DAVIS-2017 semi-supervised VOS: clips with object-id masks (palette indices; 0 = background, 255 ignored
    as background). ``max_images`` bounds the total number of frames read."""
    root = Path(root)
    listing = root / "ImageSets" / "2017" / f"{split}.txt"
    if not listing.is_file():
        raise _layout_error("davis", root, f"sequence list {listing} missing")
    clips, budget = [], max_images
    for seq in [s.strip() for s in listing.read_text().splitlines() if s.strip()]:
        frames = sorted((root / "JPEGImages" / resolution / seq).glob("*.jpg"))[:budget]
        if not frames:
            raise _layout_error("davis", root, f"no frames for sequence {seq!r}")
        masks = [root / "Annotations" / resolution / seq / f"{f.stem}.png" for f in frames]
        if not masks[0].is_file():
            raise _layout_error("davis", root, f"first-frame annotation {masks[0]} missing")
        imgs = np.stack([_resize(_read_rgb(f), size, nearest=False) for f in frames])
        labs = np.stack(
            [
                _resize(flowio.read_label_png(m), size, nearest=True) if m.is_file() else np.zeros((size, size))
                for m in masks
            ]
        ).astype(np.int64)
        labs[labs == 255] = 0
        clips.append(Clip(torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labs), name=seq))
        budget -= len(frames)
        if budget <= 0:
            break
    return VideoSet(clips)


def _flow_set(items: list[tuple[Path, Path, Path, Path | None]], size: int, desc: str) -> FlowSet:
    """Read (image1, image2, flow file, optional invalid-mask PNG) and resize to ``size x size``: images by area,
    flow and validity by nearest neighbour (so sparse KITTI flow stays exact), flow vectors scaled."""
    n = len(items)
    i1, i2 = np.empty((n, size, size, 3), np.uint8), np.empty((n, size, size, 3), np.uint8)
    flows, valids = np.empty((n, 2, size, size), np.float32), np.empty((n, size, size), bool)
    for k, (a, b, f, invalid) in enumerate(tqdm(items, desc=desc, leave=False, disable=None)):
        img1 = _read_rgb(a)
        i1[k], i2[k] = _resize(img1, size, nearest=False), _resize(_read_rgb(b), size, nearest=False)
        flow, valid = flowio.read_flow(f)
        if valid is None:
            valid = np.ones(flow.shape[1:], bool)
        if invalid is not None:
            valid &= ~flowio.read_mask_png(invalid)
        h, w = flow.shape[1:]
        scale = np.array([size / w, size / h], np.float32)[:, None, None]
        flows[k] = np.stack([_resize(c, size, nearest=True) for c in flow]) * scale
        valids[k] = _resize(valid.astype(np.uint8), size, nearest=True) > 0
    t = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    return FlowSet(t(i1), t(i2), torch.from_numpy(flows), torch.from_numpy(valids))


def flying_chairs(root: str | Path, split: str, size: int = 224, max_images: int = 2000) -> FlowSet:
    """FlyingChairs with the official train/val split file (1 = train, 2 = val)."""
    root = Path(root)
    base = _first_dir("flyingchairs", root, [root / "FlyingChairs_release", root])
    data = _first_dir("flyingchairs", root, [base / "data"])
    split_file = next((p for p in (root / "FlyingChairs_train_val.txt", base / "FlyingChairs_train_val.txt")
                       if p.is_file()), None)  # fmt: skip
    if split_file is None:
        raise _layout_error("flyingchairs", root, "FlyingChairs_train_val.txt missing")
    flags = [int(x) for x in split_file.read_text().split()]
    flows = sorted(data.glob("*_flow.flo"))
    if len(flows) != len(flags):
        raise _layout_error("flyingchairs", root, f"{len(flows)} flow files but {len(flags)} split entries")
    want = {"train": 1, "val": 2}[split]
    items = []
    for f, flag in zip(flows, flags, strict=True):
        if flag == want:
            stem = f.name[: -len("_flow.flo")]
            items.append((data / f"{stem}_img1.ppm", data / f"{stem}_img2.ppm", f, None))
    return _flow_set(items[:max_images], size, f"flyingchairs {split}")


def sintel(
    root: str | Path, split: str, size: int = 224, max_images: int = 2000, render_pass: str = "clean"
) -> FlowSet:
    """MPI-Sintel training set (the only one with flow); scenes in sorted order, every 4th scene (index % 4 == 3)
    is the validation split. Pixels marked in ``invalid/`` are not scored."""
    root = Path(root)
    frames_dir = _first_dir("sintel", root, [root / "training" / render_pass])
    scenes = sorted(p.name for p in frames_dir.iterdir() if p.is_dir())
    if not scenes:
        raise _layout_error("sintel", root, "no scene folders")
    chosen = [s for i, s in enumerate(scenes) if (i % 4 == 3) == (split == "val")]
    items = []
    for scene in chosen:
        frames = sorted((frames_dir / scene).glob("frame_*.png"))
        for a, b in zip(frames[:-1], frames[1:], strict=True):
            flow = root / "training" / "flow" / scene / f"{a.stem}.flo"
            if not flow.is_file():
                raise _layout_error("sintel", root, f"flow file {flow} missing")
            invalid = root / "training" / "invalid" / scene / a.name
            items.append((a, b, flow, invalid if invalid.is_file() else None))
    return _flow_set(items[:max_images], size, f"sintel {split}")


def kitti2015(root: str | Path, split: str, size: int = 224, max_images: int = 2000) -> FlowSet:
    """KITTI-2015 flow (training set with ground truth, ``flow_occ``); pairs 160-199 form the validation split."""
    root = Path(root)
    img_dir = _first_dir("kitti", root, [root / "training" / "image_2"])
    firsts = sorted(img_dir.glob("*_10.png"))
    if not firsts:
        raise _layout_error("kitti", root, "no *_10.png frames")
    items = []
    for a in firsts:
        index = int(a.name.split("_")[0])
        if (index >= 160) != (split == "val"):
            continue
        flow = root / "training" / "flow_occ" / a.name
        if not flow.is_file():
            raise _layout_error("kitti", root, f"flow file {flow} missing")
        items.append((a, a.with_name(a.name.replace("_10.png", "_11.png")), flow, None))
    return _flow_set(items[:max_images], size, f"kitti {split}")


SEG_LOADERS = {"cityscapes": cityscapes, "ade20k": ade20k, "voc": voc, "bdd100k": bdd100k}
FLOW_LOADERS = {"flyingchairs": flying_chairs, "sintel": sintel, "kitti": kitti2015}
SUITES = (*SEG_LOADERS, "davis", *FLOW_LOADERS)


def load_suite(name: str, root: str | Path, size: int = 224, max_images: int = 2000) -> EvalData:
    """Evaluation data of a real dataset: train/val images (segmentation), train/val pairs (flow) or val clips
    (DAVIS label propagation), resized to ``size x size``."""
    root = Path(root)
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose synth or one of {', '.join(SUITES)}")
    if not root.is_dir():
        raise _layout_error(name, root, "the dataset root is not a directory")
    if name in SEG_LOADERS:
        load = SEG_LOADERS[name]
        return EvalData(
            name, seg_train=load(root, "train", size, max_images), seg_val=load(root, "val", size, max_images)
        )
    if name in FLOW_LOADERS:
        load = FLOW_LOADERS[name]
        return EvalData(
            name, flow_train=load(root, "train", size, max_images), flow_val=load(root, "val", size, max_images)
        )
    return EvalData(name, videos=davis2017(root, "val", size, max_images))
