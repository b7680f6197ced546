"""Fully unsupervised semantic segmentation, Leopart-style as MoSiC reports it (``docs/paper_protocols.md``).

1. **Overclustering**: patch features of images resized to ``size x size``, standardised + PCA, k-means with
   ``k`` centroids fitted on a seeded per-image subsample of patches (pass 1, gathered over ranks).
2. **Cluster-based foreground extraction**: every patch is assigned to its centroid and marked foreground when it
   lies in the CLS attention mask (head-averaged last-block attention, the smallest patch set holding
   ``attn_mass`` of the attention). Each cluster's *attention precision* (share of its patches in the mask) is
   summed over the dataset; the ``bg_fraction`` of clusters with the lowest precision become background.
3. **Merging**: the foreground centroids are merged into ``num_classes - 1`` groups by Ward agglomerative
   clustering (scipy). This replaces Leopart's Infomap community detection, for which no maintained dependency is
   taken; the merge is deterministic and needs no extra graph construction.
4. **Scoring**: cluster maps are nearest-upsampled to the label maps; the (class x cluster) confusion matrix, summed
   over ranks, is merged by the cluster → {background, group} map and scored by Hungarian-matched mIoU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.hierarchy import fcluster, linkage
from torch import nn
from torch.utils.data import Dataset

from motionrep.eval.features import ViTFeatures, autocast_for, module_device, to_float_images
from motionrep.eval.metrics import confusion_matrix, matched_scores, reduce_confusion, remap_confusion
from motionrep.eval.paper.features import cls_attention
from motionrep.eval.paper.streams import apply_pca, fit_pca, item_generator, iterate_shard
from motionrep.eval.segmentation import kmeans
from motionrep.train import dist


@dataclass
class UnsupSegConfig:
    size: int = 448
    k: int = 200
    pca_dim: int | None = 50
    bg_fraction: float = 0.65  # Leopart picks 55-75 % on train
    attn_mass: float = 0.6
    sample_per_image: int = 100
    iters: int = 50
    restarts: int = 3
    workers: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.bg_fraction < 1.0 or not 0.0 < self.attn_mass <= 1.0:
            raise ValueError("bg_fraction must be in [0, 1) and attn_mass in (0, 1]")


def attention_foreground(attn: torch.Tensor, mass: float) -> torch.Tensor:
    """Per image, the fewest patches whose head-averaged attention ``(B, heads, h, w)`` sums to ``mass`` of the
    total (at least one patch): bool ``(B, h, w)``."""
    a = attn.mean(1).flatten(1)
    a = a / a.sum(1, keepdim=True).clamp_min(1e-12)
    values, order = a.sort(1, descending=True)
    before = values.cumsum(1) - values  # mass of strictly larger patches
    keep_sorted = before < mass
    return torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted).view(attn.shape[0], *attn.shape[2:])


def merge_clusters(centroids: torch.Tensor, foreground: torch.Tensor, groups: int) -> torch.Tensor:
    """Cluster → class-group map ``(K,)``: background clusters → 0, foreground centroids merged by Ward linkage
    into at most ``groups`` groups numbered ``1..groups``."""
    mapping = torch.zeros(len(centroids), dtype=torch.long)
    fg = torch.nonzero(foreground).flatten()
    if len(fg) <= groups:
        mapping[fg] = torch.arange(1, len(fg) + 1)
        return mapping
    tree = linkage(centroids[fg].double().numpy(), method="ward")
    mapping[fg] = torch.from_numpy(fcluster(tree, t=groups, criterion="maxclust").astype(np.int64))
    return mapping


def _prepare(image: torch.Tensor, size: int, device: torch.device) -> torch.Tensor:
    x = to_float_images(image[None].to(device))
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)


@torch.no_grad()
def _token_features(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with autocast_for(x.device):
        f = ViTFeatures(encoder)(x).float()
    return f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).cpu()


@torch.no_grad()
def unsup_seg(encoder: nn.Module, data: Dataset, cfg: UnsupSegConfig) -> dict[str, float]:
    """Hungarian-matched ``miou`` of the fully unsupervised pipeline on a segmentation dataset, plus
    ``fg_clusters`` (clusters kept as foreground) and ``k``."""
    device = module_device(encoder)
    encoder.eval()
    c = data.num_classes
    samples = []
    for i, (image, _) in iterate_shard(data, cfg.workers, "unsup: sample"):
        rows = _token_features(encoder, _prepare(image, cfg.size, device))
        gen = item_generator(cfg.seed, i)
        samples.append(rows[torch.randperm(len(rows), generator=gen)[: cfg.sample_per_image]])
    sample = dist.all_gather_cat(torch.cat(samples) if samples else torch.zeros(0, encoder.embed_dim))
    pca = fit_pca(sample, cfg.pca_dim)
    k = min(cfg.k, len(sample))
    centroids, _, _ = kmeans(apply_pca(sample, pca), k, cfg.iters, cfg.restarts, cfg.seed)

    cm = torch.zeros(c, k, dtype=torch.long)
    tokens, fg_tokens = torch.zeros(k, dtype=torch.long), torch.zeros(k, dtype=torch.long)
    for _, (image, label) in iterate_shard(data, cfg.workers, "unsup: assign"):
        x = _prepare(image, cfg.size, device)
        grid = encoder.grid_size(tuple(x.shape[-2:]))
        assign = torch.cdist(apply_pca(_token_features(encoder, x), pca), centroids).argmin(1)
        fg = attention_foreground(cls_attention(encoder, x), cfg.attn_mass).flatten().cpu()
        tokens += torch.bincount(assign, minlength=k)
        fg_tokens += torch.bincount(assign[fg], minlength=k)
        cmap = F.interpolate(assign.view(1, 1, *grid).float(), size=tuple(label.shape), mode="nearest")[0, 0]
        cm += confusion_matrix(label, cmap.long(), c, k, data.ignore_index)
    cm, tokens, fg_tokens = reduce_confusion(cm), dist.all_reduce_sum(tokens), dist.all_reduce_sum(fg_tokens)
    precision = fg_tokens.double() / tokens.clamp_min(1).double()
    n_bg = int(round(cfg.bg_fraction * k))
    foreground = torch.ones(k, dtype=torch.bool)
    foreground[precision.argsort()[:n_bg]] = False
    mapping = merge_clusters(centroids, foreground, c - 1)
    merged = remap_confusion(cm, mapping)[:, :c]
    return {"miou": matched_scores(merged, "hungarian")["miou"], "fg_clusters": float(foreground.sum()), "k": k}
