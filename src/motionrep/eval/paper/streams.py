"""Streaming data for the paper protocols: map-style datasets read item by item, rank sharding, seeded samplers.

* Segmentation items are ``(image uint8 (3, H, W), label int64 (H, W))``; a dataset also carries ``class_names``
  and ``ignore_index``. :class:`SegFiles` reads image/label file pairs (VOC, ADE20K, Cityscapes, BDD100K layouts:
  :func:`seg_files`, listed by :func:`motionrep.data.labeled.seg_listing`); :class:`SegSetItems` wraps an
  in-memory :class:`~motionrep.data.labeled.SegSet` (the synthetic world).
* Flow items are ``(image1, image2, flow, valid)`` (:mod:`motionrep.data.flow_datasets`; :class:`FlowSetItems`
  wraps an in-memory :class:`~motionrep.data.labeled.FlowSet`).
* Video items are ``(frames uint8 (T, 3, H, W), masks int64 (T, H, W))``: :class:`ClipFiles` (DAVIS-2017 through
  :func:`motionrep.data.catalog.davis2017`, YouTube-VOS) and :class:`ClipItems` (in-memory clips).
* :class:`GlobalBatchSampler` draws every step's *global* batch from one seeded generator and yields this rank's
  contiguous share, so N ranks see exactly the samples one rank would (the basis of the 2-ranks = 1-rank tests);
  :func:`global_step` normalises the loss by the global count; :func:`item_generator` seeds per-item sampling.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from motionrep.data.catalog import DatasetLayoutError, davis2017
from motionrep.data.flow_datasets import read_image
from motionrep.data.flowio import read_label_png
from motionrep.data.labeled import Clip, FlowSet, SegClasses, SegSet, map_labels, seg_listing
from motionrep.data.loader import worker_context
from motionrep.train import dist


class SegFiles(SegClasses, Dataset):
    """Image / label-map file pairs; ``lut`` (256 entries) maps stored label values to class ids (255 = ignore)."""

    def __init__(
        self,
        images: Sequence[Path],
        labels: Sequence[Path],
        class_names: list[str],
        ignore_index: int = 255,
        lut: np.ndarray | None = None,
    ):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} label maps")
        self.images, self.labels = list(images), list(labels)
        self.class_names, self.ignore_index, self.lut = class_names, ignore_index, lut

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        label = read_label_png(self.labels[i])
        if self.lut is not None:
            label = map_labels(label, self.lut, self.labels[i])
        image = read_image(self.images[i])
        if tuple(image.shape[1:]) != label.shape:
            raise ValueError(f"{self.images[i]} and {self.labels[i]} differ in size")
        return image, torch.from_numpy(label.astype(np.int64))


class SegSetItems(SegClasses, Dataset):
    """An in-memory :class:`SegSet` as a segmentation dataset."""

    def __init__(self, data: SegSet):
        self.data, self.images = data, data.images
        self.class_names, self.ignore_index = data.class_names, data.ignore_index

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.images[i], self.data.labels[i]


def _require(paths: list[Path], name: str) -> list[Path]:
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DatasetLayoutError(f"{name}: {len(missing)} listed file(s) missing, e.g. {missing[0]}")
    return paths


def seg_files(name: str, root: str | Path, split: str) -> SegFiles:
    """A segmentation split in its on-disk layout, read item by item at full resolution (the listing, classes and
    label mapping of :func:`motionrep.data.labeled.seg_listing`)."""
    listing = seg_listing(name, root, split)
    return SegFiles(listing.images, listing.labels, listing.class_names, 255, listing.lut)


class ClipItems(Dataset):
    """In-memory clips (:class:`~motionrep.data.labeled.Clip`) as a video dataset with ``num_classes`` labels."""

    def __init__(self, clips: Sequence[Clip], num_classes: int, ignore_index: int = 255):
        self.clips, self.num_classes, self.ignore_index = list(clips), num_classes, ignore_index

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.clips[i].frames, self.clips[i].masks


class ClipFiles(Dataset):
    """Annotated clips read one at a time: per clip, frame files and their label PNGs (object ids, 0 = background,
    255 = ignore), at most ``max_frames`` evenly spaced frames per clip. ``num_classes`` defaults to the largest id
    over all masks + 1 (every mask is read once to find it). Build with :func:`davis_clips` or :func:`ytvos_clips`."""

    def __init__(
        self,
        clips: Sequence[tuple[str, list[Path], list[Path]]],
        max_frames: int | None = None,
        num_classes: int | None = None,
    ):
        if not clips:
            raise DatasetLayoutError("no annotated clip found")
        self.clips, self.max_frames, self.ignore_index = list(clips), max_frames, 255
        if num_classes is None:
            ids = {int(v) for _, _, masks in self.clips for m in masks for v in np.unique(read_label_png(m))}
            num_classes = 1 + max(ids - {self.ignore_index}, default=1)
        self.num_classes = max(2, num_classes)

    def _frames(self, n: int) -> list[int]:
        if self.max_frames is None or n <= self.max_frames:
            return list(range(n))
        return np.linspace(0, n - 1, self.max_frames).round().astype(int).tolist()

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, files, mask_files = self.clips[i]
        keep = self._frames(len(files))
        frames = torch.stack([read_image(files[t]) for t in keep])
        masks = np.stack([read_label_png(mask_files[t]) for t in keep]).astype(np.int64)
        if ((masks >= self.num_classes) & (masks != self.ignore_index)).any():
            raise ValueError(f"clip {self.clips[i][0]}: object ids >= num_classes={self.num_classes}")
        return frames, torch.from_numpy(masks)


def davis_clips(root: str | Path, split: str = "val", resolution: str = "480p", max_frames: int | None = None):
    """DAVIS-2017 sequences of ``ImageSets/2017/<split>.txt`` (:func:`motionrep.data.catalog.davis2017`)."""
    entries = [e for e in davis2017(root, split, resolution).entries if e.annotations is not None]
    return ClipFiles(
        [(e.name, list(e.files), _require(e.annotation_files(), "davis2017")) for e in entries], max_frames
    )


def ytvos_clips(root: str | Path, split: str = "train", max_frames: int | None = None):
    """YouTube-VOS ``<split>/{JPEGImages,Annotations}/<video>/``: the frames that have an annotation PNG."""
    base = Path(root) / split
    if not (base / "Annotations").is_dir():
        raise DatasetLayoutError(
            f"youtube_vos: no {base / 'Annotations'}; expected ROOT/<split>/{{JPEGImages,Annotations}}"
        )
    clips = []
    for video in sorted(d for d in (base / "Annotations").iterdir() if d.is_dir()):
        masks = sorted(video.glob("*.png"))
        frames = [base / "JPEGImages" / video.name / f"{m.stem}.jpg" for m in masks]
        if masks:
            clips.append((video.name, _require(frames, "youtube_vos"), masks))
    return ClipFiles(clips, max_frames)


class FlowSetItems(Dataset):
    """An in-memory :class:`~motionrep.data.labeled.FlowSet` as a flow dataset of ``(image1, image2, flow, valid)``."""

    def __init__(self, data: FlowSet):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        d = self.data
        return d.image1[i], d.image2[i], d.flow[i], d.valid[i]


def resize_pair(
    image: torch.Tensor, label: torch.Tensor, hw: tuple[int, int], antialias: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """An image uint8 ``(3, H, W)`` resized bilinearly (``antialias`` for downscaling) and its label map ``(H, W)``
    by nearest neighbour, both to ``hw``: ``(uint8 image, int64 labels)``."""
    x = F.interpolate(image[None].float(), size=hw, mode="bilinear", antialias=antialias)[0]
    y = F.interpolate(label[None, None].float(), size=hw, mode="nearest")[0, 0]
    return x.round().clamp(0, 255).to(torch.uint8), y.long()


def shard_indices(n: int) -> list[int]:
    """This rank's contiguous share of ``range(n)`` (:func:`motionrep.train.dist.shard`)."""
    part = dist.shard(n)
    return list(range(part.start, part.stop))


def shard_loader(dataset: Dataset, workers: int = 0, collate=None) -> DataLoader:
    """One item at a time over this rank's shard, in order (items may differ in size)."""
    return DataLoader(
        dataset,
        batch_size=None,
        sampler=shard_indices(len(dataset)),
        num_workers=workers,
        multiprocessing_context=worker_context(workers),
        collate_fn=collate,
        persistent_workers=False,
    )


def iterate_shard(dataset: Dataset, workers: int = 0, desc: str = "items") -> Iterator[tuple[int, Any]]:
    """``(global index, item)`` over this rank's shard in order, with a progress bar on rank 0 (TTY only)."""
    loader = shard_loader(dataset, workers)
    yield from zip(loader.sampler, tqdm(loader, desc=desc, disable=not dist.is_main() or None), strict=True)


def item_generator(seed: int, index: int) -> torch.Generator:
    """The generator of one item (by its global dataset index) under ``seed``: the same on every rank layout."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


class GlobalBatchSampler(Sampler[list[tuple[int, int]]]):
    """``steps`` global batches of ``batch_size`` indices drawn with replacement from ``range(n)`` by one seeded
    generator; each yielded batch is this rank's contiguous share, as ``(index, per-sample seed)`` pairs."""

    def __init__(self, n: int, batch_size: int, steps: int, seed: int = 0):
        if n < 1:
            raise ValueError("cannot sample training batches from an empty dataset")
        if batch_size % dist.world_size():
            raise ValueError(f"batch size {batch_size} is not divisible by the {dist.world_size()} ranks")
        self.n, self.batch_size, self.steps, self.seed = n, batch_size, steps, seed

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        gen = torch.Generator().manual_seed(self.seed)
        mine = dist.shard(self.batch_size)
        for _ in range(self.steps):
            idx = torch.randint(self.n, (self.batch_size,), generator=gen)
            seeds = torch.randint(2**31 - 1, (self.batch_size,), generator=gen)
            yield list(zip(idx[mine].tolist(), seeds[mine].tolist(), strict=True))


def global_step(
    loss_sum: torch.Tensor,
    count: torch.Tensor,
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    sched: torch.optim.lr_scheduler.LRScheduler,
) -> float:
    """One optimiser step on this rank's ``loss_sum`` normalised by the ``count`` summed over ranks (DDP averages
    gradients, hence the world-size factor), so N ranks step like one rank on the global batch; returns the global
    mean loss."""
    loss = loss_sum * dist.world_size() / dist.all_reduce_sum(count.double()).clamp_min(1)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    sched.step()
    return dist.all_reduce_sum(loss.detach().double()).item() / dist.world_size()


def fit_pca(x: torch.Tensor, dim: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """StandardScaler + PCA fitted on rows ``x (N, D)``: ``(mean (D,), std (D,), basis (D, d))``; apply with
    :func:`apply_pca`. ``dim`` ``None`` or ``>= D`` keeps all standardised dimensions (identity basis)."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    if dim is None or dim >= x.shape[1]:
        return mean, std, torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    _, _, vh = torch.linalg.svd(z.T @ z / max(len(z) - 1, 1))
    return mean, std, vh[:dim].T.contiguous()


def apply_pca(x: torch.Tensor, fitted: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    mean, std, basis = fitted
    return ((x - mean) / std) @ basis
