"""In-context (Hummingbird) retrieval on fixed seeded fractions of the training set (MoSiC §10.1), streamed.

For every fraction ``1/f`` (default 1/128, 1/64, 1/8, 1/1) and seed (default 42, 400, 783, 1293, 4019), the
subset is the first ``ceil(N / f)`` indices of ``randperm(N)`` drawn from a generator seeded with ``seed`` (sorted),
so a run is reproducible and listed in the output.

Both passes stream images resized to ``size x size`` (labels nearest) in chunks of ``batch_size`` over this rank's
shard, so memory holds the bank and one chunk, never a dataset:

1. **Memory**: per chunk, features and patch label histograms; each image keeps Hummingbird's per-image budget of
   rows (:func:`~motionrep.eval.segmentation.memory_per_image`: ``memory_size // images`` when the subset does not
   fit whole), chosen by :func:`~motionrep.eval.segmentation.memory_rows` with noise from a generator seeded by
   the run's seed and the image's dataset index; the rows of all ranks are gathered in rank order.
2. **Queries**: per chunk, :func:`~motionrep.eval.segmentation.retrieval_scores` against the bank, upsampled and
   arg-maxed into a confusion matrix summed over ranks; mIoU after ``matching``.

N ranks therefore build the same bank and confusion matrix as one rank. Without trimming (the subset's patches fit
in ``memory_size``) a run equals :func:`motionrep.eval.segmentation.incontext` on the resized images.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from motionrep.data.loader import worker_context
from motionrep.eval.features import FeatureExtractor, extract, module_device
from motionrep.eval.metrics import confusion_matrix, matched_scores, reduce_confusion
from motionrep.eval.paper.streams import SegSetItems, item_generator, resize_pair, shard_indices
from motionrep.eval.segmentation import (
    memory_per_image,
    memory_rows,
    patch_label_histograms,
    retrieval_scores,
    upsampled_argmax,
)
from motionrep.train import dist

FRACTIONS = (128, 64, 8, 1)
SEEDS = (42, 400, 783, 1293, 4019)


@dataclass
class FractionConfig:
    fractions: tuple[int, ...] = FRACTIONS  # denominators f of 1/f
    seeds: tuple[int, ...] = SEEDS
    size: int = 518
    memory_size: int = 10_240_000
    k: int = 30
    temperature: float = 0.02
    matching: str = "hungarian"
    batch_size: int = 24  # images per streamed chunk (Hummingbird: 24 per GPU)
    workers: int | None = None  # loader workers per rank; None: 2 for datasets on disk, 0 for in-memory ones

    def __post_init__(self) -> None:
        if not self.fractions or min(self.fractions) < 1:
            raise ValueError(f"fractions are denominators >= 1 (e.g. 128 for 1/128), got {self.fractions}")
        if not self.seeds:
            raise ValueError("give at least one seed")
        if min(self.size, self.memory_size, self.k, self.batch_size) < 1 or (self.workers or 0) < 0:
            raise ValueError("size, memory_size, k and batch_size must be positive and workers >= 0")
        if self.matching not in ("hungarian", "identity"):
            raise ValueError(f"matching must be hungarian or identity, got {self.matching!r}")


def fraction_indices(n: int, fraction: int, seed: int) -> torch.Tensor:
    """The fixed subset of ``range(n)`` for fraction ``1/fraction`` and ``seed`` (sorted, at least one index)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[: max(1, math.ceil(n / fraction))].sort().values


class ResizedItems(Dataset):
    """The listed items of a segmentation dataset as ``(dataset index, image, label)`` resized to ``size``²."""

    def __init__(self, data: Dataset, size: int, indices: Sequence[int] | None = None):
        self.data, self.size = data, size
        self.indices = list(range(len(data))) if indices is None else [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        index = self.indices[i]
        return index, *resize_pair(*self.data[index], (self.size, self.size))


def iterate_chunks(items: ResizedItems, cfg: FractionConfig, desc: str) -> Iterator[tuple[torch.Tensor, ...]]:
    """``(dataset indices (B,), images (B, 3, S, S), labels (B, S, S))`` over this rank's shard, in order."""
    workers = cfg.workers if cfg.workers is not None else 0 if isinstance(items.data, SegSetItems) else 2
    loader = DataLoader(
        items,
        batch_size=cfg.batch_size,
        sampler=shard_indices(len(items)),
        num_workers=workers,
        multiprocessing_context=worker_context(workers),
    )
    yield from tqdm(loader, desc=desc, leave=False, disable=not dist.is_main() or None)


@torch.no_grad()
def stream_memory(
    extractor: FeatureExtractor, train: Dataset, indices: Sequence[int], cfg: FractionConfig, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The Hummingbird memory of the listed training images, streamed: L2-normalised features ``(S, C)`` and soft
    labels ``(S, K)`` of every rank, in dataset order, on the extractor's device (where NCCL gathers them)."""
    feats, labels = [torch.zeros(0, extractor.dim)], [torch.zeros(0, train.num_classes)]
    for index, images, label_maps in iterate_chunks(ResizedItems(train, cfg.size, indices), cfg, "incontext memory"):
        f = extract(extractor, images, batch_size=len(images), distributed=False, desc="features")
        soft = patch_label_histograms(label_maps, train.num_classes, extractor.stride, train.ignore_index)
        patches = f.shape[-2] * f.shape[-1]
        per_image = memory_per_image(cfg.memory_size, len(indices), patches)
        noise = None
        if per_image < patches:
            noise = torch.stack([torch.rand(patches, generator=item_generator(seed, i)) for i in index.tolist()])
        rows, soft_rows = memory_rows(f, soft, per_image, noise)
        feats.append(rows)
        labels.append(soft_rows)
    device = module_device(extractor)
    return dist.all_gather_cat(torch.cat(feats).to(device)), dist.all_gather_cat(torch.cat(labels).to(device))


@torch.no_grad()
def stream_confusion(
    extractor: FeatureExtractor, val: Dataset, memory: torch.Tensor, memory_labels: torch.Tensor, cfg: FractionConfig
) -> torch.Tensor:
    """Confusion matrix ``(C, C)`` of retrieval on the streamed validation set, summed over ranks (on the memory's
    device, as NCCL needs)."""
    c = val.num_classes
    cm = torch.zeros(c, c, dtype=torch.long)
    for _, images, labels in iterate_chunks(ResizedItems(val, cfg.size), cfg, "incontext queries"):
        f = extract(extractor, images, batch_size=len(images), distributed=False, desc="features")
        scores = retrieval_scores(f, memory, memory_labels, cfg.k, cfg.temperature)
        cm += confusion_matrix(labels, upsampled_argmax(scores, tuple(labels.shape[-2:])), c, c, val.ignore_index)
    return reduce_confusion(cm.to(memory.device)).cpu()


def incontext_run(
    extractor: FeatureExtractor, train: Dataset, val: Dataset, indices: Sequence[int], cfg: FractionConfig, seed: int
) -> dict:
    """One run: ``{"memory_rows", "miou", "confusion"}`` of retrieval with the memory of the listed images."""
    memory, memory_labels = stream_memory(extractor, train, indices, cfg, seed)
    cm = stream_confusion(extractor, val, memory, memory_labels, cfg)
    return {"memory_rows": len(memory), "miou": matched_scores(cm, cfg.matching)["miou"], "confusion": cm}


def incontext_fractions(extractor: FeatureExtractor, train: Dataset, val: Dataset, cfg: FractionConfig) -> dict:
    """Run every (fraction, seed); returns ``{"settings", "runs": [...], "summary": {"1/f": {mean, std, n}}}``
    with each run's subset size, memory rows and mIoU."""
    runs = []
    for fraction in cfg.fractions:
        for seed in cfg.seeds if fraction > 1 else cfg.seeds[:1]:  # the full set is the same for every seed
            idx = fraction_indices(len(train), fraction, seed).tolist()
            res = incontext_run(extractor, train, val, idx, cfg, seed)
            runs.append(
                {
                    "fraction": f"1/{fraction}",
                    "seed": seed,
                    "images": len(idx),
                    "memory_rows": res["memory_rows"],
                    "miou": res["miou"],
                }
            )
    summary = {}
    for fraction in cfg.fractions:
        values = [r["miou"] for r in runs if r["fraction"] == f"1/{fraction}"]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        summary[f"1/{fraction}"] = {"miou_mean": statistics.fmean(values), "miou_std": std, "runs": len(values)}
    settings = {
        "fractions": [f"1/{f}" for f in cfg.fractions],
        "seeds": list(cfg.seeds),
        "size": cfg.size,
        "memory_size": cfg.memory_size,
        "memory_per_image": "memory_size // images when the subset's patches do not all fit",
        "k": cfg.k,
        "temperature": cfg.temperature,
        "matching": cfg.matching,
        "batch_size": cfg.batch_size,
        "workers": "auto" if cfg.workers is None else cfg.workers,
        "train_images": len(train),
        "val_images": len(val),
    }
    return {"settings": settings, "runs": runs, "summary": summary}
