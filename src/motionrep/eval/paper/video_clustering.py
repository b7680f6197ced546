"""Unsupervised video semantic segmentation as in TimeT / MoSiC (``docs/paper_protocols.md``).

Frames are resized to ``size x size``; frozen dense features are bilinearly upsampled to ``res x res``,
standardised and PCA-reduced, and clustered with k-means:

* **F** (frame-wise): one clustering and one matching per frame;
* **C** (clip-wise): one clustering and one matching per clip;
* **D** (dataset-wise): scaler, PCA and k-means fitted on a seeded subsample of pixels of all clips (pass 1), then
  every pixel assigned to its nearest centroid at ``eval_res`` and one matching over the dataset (pass 2).

K is the number of ground-truth labels present in the frame (F) or clip (C), or the dataset's class count (D),
times ``overcluster`` (> 1: many-to-one matching instead of Hungarian). Matched confusion matrices are summed over
frames, clips and ranks into one mIoU per protocol; no protocol keeps more than one clip's features in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from motionrep.eval.features import FeatureExtractor, autocast_for, module_device, to_float_images
from motionrep.eval.metrics import (
    confusion_matrix,
    hungarian_match,
    many_to_one_match,
    reduce_confusion,
    remap_confusion,
    segmentation_scores,
)
from motionrep.eval.paper.streams import apply_pca, fit_pca, item_generator, iterate_shard
from motionrep.eval.segmentation import kmeans
from motionrep.train import dist

PROTOCOLS = ("F", "C", "D")


@dataclass
class VideoClusterConfig:
    protocols: tuple[str, ...] = PROTOCOLS
    size: int = 224  # input frames size x size
    res: int = 224  # clustering resolution of the upsampled features (F, C)
    eval_res: int = 112  # D protocol resolution
    pca_dim: int | None = 50
    overcluster: int = 1  # K multiplier; > 1 uses many-to-one matching
    iters: int = 50
    restarts: int = 5
    sample_per_frame: int = 500  # D protocol: pixels per frame in the fitting subsample
    batch_size: int = 32
    workers: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.protocols) - set(PROTOCOLS))
        if unknown or not self.protocols:
            raise ValueError(f"video-clustering protocols must be among {PROTOCOLS}, got {self.protocols}")
        if self.overcluster < 1:
            raise ValueError(f"overcluster must be >= 1, got {self.overcluster}")


@torch.no_grad()
def clip_features(extractor: FeatureExtractor, frames: torch.Tensor, size: int, res: int, batch: int) -> torch.Tensor:
    """Frames uint8 ``(T, 3, H, W)`` → features ``(T, res, res, C)`` (float32, CPU) at ``size`` input."""
    device = module_device(extractor)
    out = []
    for s in range(0, len(frames), batch):
        x = F.interpolate(to_float_images(frames[s : s + batch].to(device)), size=(size, size), mode="bilinear")
        with autocast_for(device):
            f = extractor(x.clamp(0, 1)).float()
        out.append(F.interpolate(f, size=(res, res), mode="bilinear").permute(0, 2, 3, 1).cpu())
    return torch.cat(out)


def resize_masks(masks: torch.Tensor, res: int) -> torch.Tensor:
    """Label maps ``(T, H, W)`` → ``(T, res, res)`` by nearest neighbour."""
    return F.interpolate(masks[:, None].float(), size=(res, res), mode="nearest")[:, 0].long()


def _match(cm: torch.Tensor, overcluster: int) -> torch.Tensor:
    return remap_confusion(cm, hungarian_match(cm) if overcluster == 1 else many_to_one_match(cm))


def cluster_and_match(
    feats: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int, cfg: VideoClusterConfig, seed: int
) -> torch.Tensor:
    """Cluster the rows of ``feats (..., C)`` with K = labels present x overcluster; matched ``(C, C + 1)``."""
    x, y = feats.reshape(-1, feats.shape[-1]), labels.reshape(-1)
    present = torch.unique(y[y != ignore_index])
    k = min(max(1, len(present)) * cfg.overcluster, len(x))
    x = apply_pca(x, fit_pca(x, cfg.pca_dim))
    _, assign, _ = kmeans(x, k, cfg.iters, cfg.restarts, seed)
    return _match(confusion_matrix(y, assign, num_classes, k, ignore_index), cfg.overcluster)


def _nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    return torch.cat([torch.cdist(x[s : s + chunk], centroids).argmin(1) for s in range(0, len(x), chunk)])


def _fit_dataset_clusters(extractor, clips: Dataset, cfg: VideoClusterConfig, k: int):
    """Pass 1 of D: a seeded pixel subsample of every clip (gathered over ranks) → scaler + PCA + centroids."""
    samples = []
    for i, (frames, _) in iterate_shard(clips, cfg.workers, "D: sample"):
        feats = clip_features(extractor, frames, cfg.size, cfg.eval_res, cfg.batch_size).reshape(-1, extractor.dim)
        gen = item_generator(cfg.seed, i)
        n = min(len(feats), cfg.sample_per_frame * len(frames))
        samples.append(feats[torch.randperm(len(feats), generator=gen)[:n]])
    local = torch.cat(samples) if samples else torch.zeros(0, extractor.dim)
    sample = dist.all_gather_cat(local)
    fitted = fit_pca(sample, cfg.pca_dim)
    centroids, _, _ = kmeans(apply_pca(sample, fitted), min(k, len(sample)), cfg.iters, cfg.restarts, cfg.seed)
    return fitted, centroids


def video_clustering(extractor: FeatureExtractor, clips: Dataset, cfg: VideoClusterConfig) -> dict[str, float]:
    """mIoU (percent) per requested protocol, keys ``miou_F``, ``miou_C``, ``miou_D``; ``clips``: a video dataset
    (:mod:`motionrep.eval.paper.streams`) with ``num_classes`` and ``ignore_index``."""
    c, ignore = clips.num_classes, clips.ignore_index
    k_d = c * cfg.overcluster
    fitted = _fit_dataset_clusters(extractor, clips, cfg, k_d) if "D" in cfg.protocols else None
    matched = {p: torch.zeros(c, c + 1, dtype=torch.long) for p in ("F", "C") if p in cfg.protocols}
    cm_d = torch.zeros(c, k_d, dtype=torch.long)
    for i, (frames, masks) in iterate_shard(clips, cfg.workers, "clips"):
        if {"F", "C"} & set(cfg.protocols):
            feats = clip_features(extractor, frames, cfg.size, cfg.res, cfg.batch_size)
            labels = resize_masks(masks, cfg.res)
            if "C" in matched:
                matched["C"] += cluster_and_match(feats, labels, c, ignore, cfg, cfg.seed + i)
            if "F" in matched:
                for t in range(len(frames)):
                    matched["F"] += cluster_and_match(feats[t], labels[t], c, ignore, cfg, cfg.seed + i)
        if fitted is not None:
            (pca, centroids), labels = fitted, resize_masks(masks, cfg.eval_res)
            feats = clip_features(extractor, frames, cfg.size, cfg.eval_res, cfg.batch_size)
            assign = _nearest(apply_pca(feats.reshape(-1, feats.shape[-1]), pca), centroids)
            cm_d += confusion_matrix(labels.reshape(-1), assign, c, k_d, ignore)
    out = {f"miou_{p}": segmentation_scores(reduce_confusion(m))["miou"] for p, m in matched.items()}
    if fitted is not None:
        out["miou_D"] = segmentation_scores(_match(reduce_confusion(cm_d), cfg.overcluster))["miou"]
    return dict(sorted(out.items()))
