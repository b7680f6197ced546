"""In-context (Hummingbird) retrieval on fixed seeded fractions of the training set (MoSiC §10.1).

For every fraction ``1/f`` (default 1/128, 1/64, 1/8, 1/1) and seed (default 42, 400, 783, 1293, 4019), the
subset is the first ``ceil(N / f)`` indices of ``randperm(N)`` drawn from a generator seeded with ``seed`` (sorted),
so a run is reproducible and listed in the output. Retrieval itself is :func:`motionrep.eval.segmentation.incontext`
(memory size, k, temperature and matching passed through); images are resized to ``size x size`` (labels
nearest) before it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from motionrep.data.labeled import SegSet
from motionrep.eval.features import FeatureExtractor
from motionrep.eval.segmentation import incontext
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

    def __post_init__(self) -> None:
        if not self.fractions or min(self.fractions) < 1:
            raise ValueError(f"fractions are denominators >= 1 (e.g. 128 for 1/128), got {self.fractions}")
        if not self.seeds:
            raise ValueError("give at least one seed")


def fraction_indices(n: int, fraction: int, seed: int) -> torch.Tensor:
    """The fixed subset of ``range(n)`` for fraction ``1/fraction`` and ``seed`` (sorted, at least one index)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=gen)[: max(1, math.ceil(n / fraction))].sort().values


def load_segset(data: Dataset, indices: Sequence[int], size: int, desc: str = "load") -> SegSet:
    """The listed items of a segmentation dataset, resized to ``size x size``, as an in-memory :class:`SegSet`."""
    images, labels = [], []
    for i in tqdm(list(indices), desc=desc, leave=False, disable=not dist.is_main() or None):
        image, label = data[int(i)]
        images.append(F.interpolate(image[None].float(), size=(size, size), mode="bilinear", antialias=True)[0])
        labels.append(F.interpolate(label[None, None].float(), size=(size, size), mode="nearest")[0, 0])
    return SegSet(
        torch.stack(images).round().clamp(0, 255).to(torch.uint8),
        torch.stack(labels).long(),
        list(data.class_names),
        data.ignore_index,
    )


def incontext_fractions(extractor: FeatureExtractor, train: Dataset, val: Dataset, cfg: FractionConfig) -> dict:
    """Run every (fraction, seed); returns ``{"settings", "runs": [...], "summary": {"1/f": {mean, std, n}}}``
    with each run's subset size, memory rows and mIoU."""
    val_set = load_segset(val, range(len(val)), cfg.size, "incontext val")
    runs = []
    for fraction in cfg.fractions:
        for seed in cfg.seeds if fraction > 1 else cfg.seeds[:1]:  # the full set is the same for every seed
            idx = fraction_indices(len(train), fraction, seed)
            subset = load_segset(train, idx.tolist(), cfg.size, f"incontext 1/{fraction}")
            res = incontext(
                extractor, subset, val_set, cfg.memory_size, cfg.k, cfg.temperature, cfg.matching, seed=seed
            )
            runs.append(
                {
                    "fraction": f"1/{fraction}",
                    "seed": seed,
                    "images": len(idx),
                    "memory_rows": int(res.metrics["memory"]),
                    "miou": res.metrics["miou"],
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
        "k": cfg.k,
        "temperature": cfg.temperature,
        "matching": cfg.matching,
        "train_images": len(train),
        "val_images": len(val),
    }
    return {"settings": settings, "runs": runs, "summary": summary}
