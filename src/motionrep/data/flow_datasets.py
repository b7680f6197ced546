"""Optical-flow training and evaluation sets in their real on-disk layouts, read pair by pair (streaming).

An item is ``(image1 uint8 (3, H, W), image2 uint8 (3, H, W), flow float32 (2, H, W) (dx, dy) from image1 to
image2, valid bool (H, W))``; pixels with a non-finite flow or ``|flow| >= 1000`` are invalid (RAFT's rule), KITTI
adds its sparse mask. Layouts (:data:`LAYOUTS`):

* FlyingChairs, MPI-Sintel (clean / final), KITTI-2015 (``flow_occ``), FlyingThings3D (``frames_cleanpass`` /
  ``frames_finalpass``, both cameras, ``into_future`` and ``into_past`` pairs as in RAFT) and TartanAir
  (``<env>/<Easy|Hard>/<P>/image_left``, ``flow/*_flow.npy``; its occlusion masks are not used, as in CroCo).
* :func:`croco_mix`: CroCo-Flow's training mixture used by Midway (40x Sintel clean, 40x Sintel final, 4x
  FlyingThings, 4x FlyingChairs, 1x TartanAir), and :func:`chairs_things` (the ablation setting).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset

from motionrep.data.catalog import DatasetLayoutError
from motionrep.data.flowio import read_flow, read_mask_png

LAYOUTS = {
    "chairs": "ROOT/FlyingChairs_release/data/<id>_{img1,img2}.ppm, <id>_flow.flo (+ FlyingChairs_train_val.txt)",
    "sintel": "ROOT/MPI-Sintel-complete/training/{clean,final}/<scene>/frame_<n>.png, training/flow/<scene>/*.flo",
    "kitti": "ROOT/KITTI/training/image_2/<id>_{10,11}.png, training/flow_occ/<id>_10.png",
    "things": "ROOT/FlyingThings3D/frames_{cleanpass,finalpass}/<TRAIN|TEST>/<A|B|C>/<seq>/<left|right>/<n>.png, "
    "optical_flow/<TRAIN|TEST>/<A|B|C>/<seq>/into_{future,past}/<left|right>/OpticalFlowInto{Future,Past}_<n>_<L|R>.pfm",
    "tartanair": "ROOT/TartanAir/<env>/<Easy|Hard>/<P>/image_left/<n>_left.png, flow/<n>_<n+1>_flow.npy",
}
MAX_FLOW = 1000.0


def read_image(path: str | Path) -> torch.Tensor:
    """An image file as RGB uint8 ``(3, H, W)``; ``ValueError`` naming the file when unreadable."""
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable image ({e})") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def read_pfm(path: str | Path) -> np.ndarray:
    """A PFM image as float32 ``(H, W)`` or ``(H, W, 3)``, top row first."""
    with open(path, "rb") as f:
        header = f.readline().strip()
        if header not in (b"PF", b"Pf"):
            raise ValueError(f"{path}: not a PFM file")
        dims = f.readline().split()
        scale = float(f.readline().strip())
        w, h = int(dims[0]), int(dims[1])
        data = np.fromfile(f, dtype="<f4" if scale < 0 else ">f4")
    channels = 3 if header == b"PF" else 1
    if data.size != h * w * channels:
        raise ValueError(f"{path}: truncated PFM data")
    data = data.reshape(h, w, channels)[::-1].astype(np.float32)
    return data[..., 0] if channels == 1 else np.ascontiguousarray(data)


def write_pfm(path: str | Path, image: np.ndarray) -> None:
    """Write float ``(H, W)`` or ``(H, W, 3)`` as little-endian PFM."""
    image = np.asarray(image, np.float32)
    header = b"PF" if image.ndim == 3 else b"Pf"
    with open(path, "wb") as f:
        f.write(header + b"\n" + f"{image.shape[1]} {image.shape[0]}\n".encode() + b"-1\n")
        f.write(np.ascontiguousarray(image[::-1]).astype("<f4").tobytes())


def read_any_flow(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """``(flow (2, H, W), valid or None)`` from ``.flo``, KITTI ``.png``, ``.npy`` or FlyingThings ``.pfm``."""
    if path.suffix.lower() == ".pfm":
        return np.ascontiguousarray(read_pfm(path)[..., :2].transpose(2, 0, 1)), None
    return read_flow(path)


class FlowPairs(Dataset):
    """Listed ``(image1, image2, flow file[, invalid-mask PNG])`` entries read on demand."""

    def __init__(self, name: str, triples: Sequence[tuple[Path, ...]]):
        if not triples:
            raise DatasetLayoutError(f"{name}: no flow pairs found")
        self.name, self.triples = name, list(triples)

    def __len__(self) -> int:
        return len(self.triples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        p1, p2, pf, *invalid = self.triples[i]
        flow, valid = read_any_flow(pf)
        if invalid:
            valid = ~read_mask_png(invalid[0]) if valid is None else valid & ~read_mask_png(invalid[0])
        image1, image2 = read_image(p1), read_image(p2)
        if image1.shape != image2.shape or tuple(image1.shape[1:]) != flow.shape[1:]:
            raise ValueError(f"{self.name}: sizes of {p1}, {p2} and {pf} differ")
        ok = np.isfinite(flow).all(0) & (np.abs(np.nan_to_num(flow)).max(0) < MAX_FLOW)
        valid = ok if valid is None else ok & valid
        return image1, image2, torch.from_numpy(np.nan_to_num(flow)), torch.from_numpy(valid)


def _find(root: Path, names: Sequence[str], marker: str, dataset: str) -> Path:
    """The first of ``root/<name>`` (or ``root`` itself) that contains ``marker``."""
    for base in [root / n for n in names] + [root]:
        if (base / marker).exists():
            return base
    raise DatasetLayoutError(f"{dataset}: no {marker} under {root}; expected {LAYOUTS[dataset]}")


def flying_chairs(root: str | Path, split: str = "train") -> FlowPairs:
    """FlyingChairs; ``split`` ``train`` / ``val`` by ``FlyingChairs_train_val.txt`` (1 = train, 2 = val) when
    present next to ``data/`` or in ``root``, else every pair is ``train``."""
    root = Path(root)
    base = _find(root, ["FlyingChairs_release", "FlyingChairs"], "data", "chairs")
    flows = sorted((base / "data").glob("*_flow.flo"))
    names = ("FlyingChairs_train_val.txt", "chairs_split.txt")
    split_file = next((d / n for d in (base, root) for n in names if (d / n).is_file()), None)
    if split_file is not None:
        marks = np.loadtxt(split_file, dtype=np.int64).reshape(-1)
        if len(marks) != len(flows):
            raise DatasetLayoutError(f"chairs: {split_file} lists {len(marks)} pairs but {len(flows)} flows exist")
        flows = [f for f, m in zip(flows, marks, strict=True) if m == (1 if split == "train" else 2)]
    elif split != "train":
        raise DatasetLayoutError(f"chairs: split {split!r} needs FlyingChairs_train_val.txt in {base}")
    stem = lambda f, s: f.with_name(f.name.replace("_flow.flo", s))  # noqa: E731
    return FlowPairs("chairs", [(stem(f, "_img1.ppm"), stem(f, "_img2.ppm"), f) for f in flows])


def sintel(
    root: str | Path, split: str = "training", passes: Sequence[str] = ("clean",), scenes: Sequence[str] | None = None
) -> FlowPairs:
    """MPI-Sintel consecutive pairs of the given passes; ``scenes`` restricts to named sequences (e.g. a held-out
    validation subset). Pixels marked in ``training/invalid/<scene>/`` are invalid."""
    base = _find(Path(root), ["MPI-Sintel-complete", "Sintel", "MPI-Sintel"], split, "sintel") / split
    triples = []
    for p in passes:
        if p not in ("clean", "final"):
            raise ValueError(f"sintel pass must be clean or final, got {p!r}")
        for scene in sorted(d for d in (base / p).iterdir() if d.is_dir()):
            if scenes is not None and scene.name not in scenes:
                continue
            frames = sorted(scene.glob("frame_*.png"))
            for a, b in zip(frames[:-1], frames[1:], strict=True):
                invalid = base / "invalid" / scene.name / a.name
                entry = (a, b, base / "flow" / scene.name / f"{a.stem}.flo")
                triples.append((*entry, invalid) if invalid.is_file() else entry)
    return FlowPairs("sintel", [t for t in triples if t[2].is_file()])


def kitti2015(root: str | Path) -> FlowPairs:
    """KITTI-2015 training pairs (frames 10 → 11) with the sparse ``flow_occ`` ground truth."""
    base = _find(Path(root), ["KITTI", "KITTI-2015", "data_scene_flow"], "training/flow_occ", "kitti") / "training"
    flows = sorted((base / "flow_occ").glob("*_10.png"))
    img = lambda f, s: base / "image_2" / f.name.replace("_10.png", s)  # noqa: E731
    return FlowPairs("kitti", [(img(f, "_10.png"), img(f, "_11.png"), f) for f in flows])


def flying_things(root: str | Path, split: str = "TRAIN", passes: Sequence[str] = ("clean", "final")) -> FlowPairs:
    """FlyingThings3D (``TRAIN`` / ``TEST``): for each pass, camera and sequence, forward pairs ``(i, i+1)`` with
    ``into_future`` flow of frame i and backward pairs ``(i+1, i)`` with ``into_past`` flow of frame i+1."""
    base = _find(Path(root), ["FlyingThings3D", "flyingthings3d"], "optical_flow", "things")
    triples = []
    for p in passes:
        frames_root = base / f"frames_{p}pass" / split
        for seq in sorted(frames_root.glob("*/*")):
            for cam, c in (("left", "L"), ("right", "R")):
                frames = sorted((seq / cam).glob("*.png"))
                flow_dir = base / "optical_flow" / split / seq.parent.name / seq.name
                for a, b in zip(frames[:-1], frames[1:], strict=True):
                    fwd = flow_dir / "into_future" / cam / f"OpticalFlowIntoFuture_{a.stem}_{c}.pfm"
                    bwd = flow_dir / "into_past" / cam / f"OpticalFlowIntoPast_{b.stem}_{c}.pfm"
                    triples += [t for t in ((a, b, fwd), (b, a, bwd)) if t[2].is_file()]
    return FlowPairs("things", triples)


def tartanair(root: str | Path) -> FlowPairs:
    """TartanAir left-camera pairs ``(n, n+1)`` of every environment, difficulty and trajectory."""
    base = _find(Path(root), ["TartanAir", "tartanair"], "", "tartanair")
    triples = []
    for traj in sorted(base.glob("*/*/*")):
        for flow in sorted((traj / "flow").glob("*_flow.npy")):
            m = re.fullmatch(r"(\d+)_(\d+)_flow\.npy", flow.name)
            if m:
                a, b = (traj / "image_left" / f"{m.group(k)}_left.png" for k in (1, 2))
                if a.is_file() and b.is_file():
                    triples.append((a, b, flow))
    return FlowPairs("tartanair", triples)


def _repeat(dataset: Dataset, times: int) -> list[Dataset]:
    return [dataset] * times


def croco_mix(root: str | Path, sintel_scenes: Sequence[str] | None = None) -> ConcatDataset:
    """CroCo-Flow's main training mixture (Midway §9.2): ``40 x Sintel clean + 40 x Sintel final + 4 x
    FlyingThings (both passes) + 4 x FlyingChairs (train) + TartanAir``, datasets found under ``root``."""
    root = Path(root)
    parts = [
        *_repeat(sintel(root, passes=("clean",), scenes=sintel_scenes), 40),
        *_repeat(sintel(root, passes=("final",), scenes=sintel_scenes), 40),
        *_repeat(flying_things(root), 4),
        *_repeat(flying_chairs(root), 4),
        tartanair(root),
    ]
    return ConcatDataset(parts)


def chairs_things(root: str | Path) -> ConcatDataset:
    """The ablation training set (CroCo v2 Table 11): FlyingChairs (train) + FlyingThings3D."""
    return ConcatDataset([flying_chairs(root), flying_things(root)])


def flow_dataset(name: str, root: str | Path, split: str | None = None) -> Dataset:
    """By name: ``chairs``, ``sintel-clean``, ``sintel-final``, ``kitti``, ``things``, ``tartanair``, ``croco-mix``,
    ``chairs-things``; ``split`` is the dataset's own split name where it has one."""
    makers = {
        "chairs": lambda: flying_chairs(root, split or "train"),
        "sintel-clean": lambda: sintel(root, split or "training", ("clean",)),
        "sintel-final": lambda: sintel(root, split or "training", ("final",)),
        "kitti": lambda: kitti2015(root),
        "things": lambda: flying_things(root, split or "TRAIN"),
        "tartanair": lambda: tartanair(root),
        "croco-mix": lambda: croco_mix(root),
        "chairs-things": lambda: chairs_things(root),
    }
    if name not in makers:
        raise ValueError(f"unknown flow dataset {name!r}; choose from {', '.join(makers)}")
    return makers[name]()
