"""Recognition protocols on frozen dense features: linear probe, overclustering, in-context retrieval.

Each protocol is one plain function of a feature extractor (see :mod:`motionrep.eval.features`) and labelled
images (:class:`motionrep.data.labeled.SegSet`); it returns a :class:`SegResult` with metrics in percent and the
first few predicted label maps for figures. Definitions are in ``docs/evaluation.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from motionrep.data.labeled import SegSet
from motionrep.eval.features import FeatureExtractor, extract, figure_indices, module_device
from motionrep.eval.metrics import (
    confusion_matrix,
    hungarian_match,
    many_to_one_match,
    matched_scores,
    reduce_confusion,
    remap_confusion,
    segmentation_scores,
)
from motionrep.train import dist


@dataclass
class SegResult:
    metrics: dict[str, float]
    predictions: torch.Tensor  # (n_fig, H, W) uint8 label maps of the figure_indices validation images


def upsampled_argmax(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Label maps ``(B, H, W)`` (CPU): class scores ``(B, K, h, w)`` bilinearly upsampled to ``size``, arg-maxed."""
    return F.interpolate(scores, size=size, mode="bilinear", align_corners=False).argmax(1).cpu()


def _predict_and_score(
    logits_fn, feats: torch.Tensor, val: SegSet, num_pred: int, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Confusion matrix ``(C, num_pred)`` (this rank's shard, summed over ranks) and the predictions of the
    :func:`~motionrep.eval.features.figure_indices` images."""
    part = dist.shard(len(val))
    show = figure_indices(len(val))
    cm = torch.zeros(val.num_classes, num_pred, dtype=torch.long)
    shown = []
    for s in range(part.start, part.stop, batch_size):
        e = min(s + batch_size, part.stop)
        pred = upsampled_argmax(logits_fn(feats[s:e]), tuple(val.labels.shape[-2:]))
        cm += confusion_matrix(val.labels[s:e], pred, val.num_classes, num_pred, val.ignore_index)
        shown.append(pred[show[(show >= s) & (show < e)] - s])
    cm = reduce_confusion(cm)
    preds = torch.cat(shown) if shown else torch.zeros(0, *val.labels.shape[-2:], dtype=torch.long)
    return cm, dist.all_gather_cat(preds).to(torch.uint8)


def standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Z-score feature maps ``(N, C, h, w)`` per channel with the statistics of ``train``."""
    mean = train.mean((0, 2, 3), keepdim=True)
    std = train.std((0, 2, 3), keepdim=True).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def downsample_labels(labels: torch.Tensor, factor: int) -> torch.Tensor:
    """Nearest-neighbour downsampling of label maps ``(N, H, W)`` by an integer factor (identity for 1)."""
    if factor <= 1:
        return labels
    size = (labels.shape[-2] // factor, labels.shape[-1] // factor)
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def seg_linear(
    extractor: FeatureExtractor,
    train: SegSet,
    val: SegSet,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 1e-3,
    optimizer: str = "adamw",
    weight_decay: float = 1e-4,
    train_downsample: int = 2,
    seed: int = 0,
) -> SegResult:
    """Linear probe: a 1x1 convolution on frozen, standardised patch features, bilinearly upsampled to the label
    resolution, trained with cross-entropy (ignore index) under a cosine schedule. Metrics ``miou``, ``acc``.

    Training compares logits and nearest-downsampled labels at ``1 / train_downsample`` of the label resolution
    (as NeCo trains at 100x100); scoring is at the full label resolution."""
    ftrain, fval = standardise(
        extract(extractor, train.images, desc="seg_linear train"), extract(extractor, val.images)
    )
    device = module_device(extractor)
    head = nn.Conv2d(ftrain.shape[1], train.num_classes, 1).to(device)
    if optimizer == "adamw":
        opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected adamw or sgd")
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    gen = torch.Generator().manual_seed(seed)
    labels = downsample_labels(train.labels, train_downsample)
    hw = tuple(labels.shape[-2:])
    for _ in tqdm(range(steps), desc="seg_linear", leave=False, disable=not dist.is_main() or None):
        idx = torch.randint(len(train), (min(batch_size, len(train)),), generator=gen)
        logits = F.interpolate(head(ftrain[idx].to(device)), size=hw, mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, labels[idx].to(device), ignore_index=train.ignore_index)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    head.eval()
    with torch.no_grad():
        cm, preds = _predict_and_score(lambda f: head(f.to(device)), fval, val, val.num_classes)
    return SegResult(segmentation_scores(cm), preds)


def pca(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Project centred rows of ``x (N, D)`` on their top ``dim`` principal components (``x`` if ``dim >= D``)."""
    if dim >= x.shape[1]:
        return x
    centred = x - x.mean(0)
    _, _, vh = torch.linalg.svd(centred.T @ centred / max(len(x) - 1, 1))
    return centred @ vh[:dim].T


def _sq_dists(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return ((x * x).sum(1, keepdim=True) - 2 * x @ c.T + (c * c).sum(1)).clamp_min_(0)


def _assign(x: torch.Tensor, c: torch.Tensor, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid and squared distance of each row, in chunks of rows."""
    labels, dists = [], []
    for s in range(0, len(x), chunk):
        d, i = _sq_dists(x[s : s + chunk], c).min(1)
        labels.append(i)
        dists.append(d)
    return torch.cat(labels), torch.cat(dists)


def kmeans_pp_init(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding: each new centre drawn with probability proportional to the squared distance."""
    centres = [x[torch.randint(len(x), (1,), generator=gen)]]
    d2 = _sq_dists(x, centres[0])[:, 0]
    for _ in range(1, k):
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / len(d2))
        nxt = x[torch.multinomial(probs.cpu(), 1, generator=gen).to(x.device)]
        centres.append(nxt)
        d2 = torch.minimum(d2, _sq_dists(x, nxt)[:, 0])
    return torch.cat(centres)


def kmeans(
    x: torch.Tensor, k: int, iters: int = 50, restarts: int = 3, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Lloyd's k-means with k-means++ init; the best of ``restarts`` runs by inertia.

    Returns centroids ``(k, D)``, assignments ``(N,)`` and inertia (sum of squared distances). An empty cluster
    keeps its previous centroid.
    """
    if k < 1 or k > len(x):
        raise ValueError(f"k-means needs 1 <= k <= number of points ({len(x)}), got k={k}")
    gen = torch.Generator().manual_seed(seed)
    best = None
    for _ in range(restarts):
        c = kmeans_pp_init(x, k, gen)
        labels = None
        for _ in range(iters):
            new, _ = _assign(x, c)
            if labels is not None and torch.equal(new, labels):
                break
            labels = new
            counts = torch.bincount(labels, minlength=k).to(x.dtype)
            sums = torch.zeros_like(c).index_add_(0, labels, x)
            c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
        labels, d = _assign(x, c)
        inertia = d.sum().item()
        if best is None or inertia < best[2]:
            best = (c, labels, inertia)
    return best


def overcluster(
    extractor: FeatureExtractor,
    val: SegSet,
    ks: tuple[int, ...] = (),
    pca_dim: int | None = 50,
    iters: int = 50,
    restarts: int = 3,
    seed: int = 0,
) -> SegResult:
    """k-means on frozen, standardised (and PCA-reduced) patch features of the validation images.

    K = #classes is scored after Hungarian matching (``miou``); every K in ``ks`` (> #classes) after many-to-one
    matching (``miou_k<K>``). Cluster maps are nearest-upsampled to the label resolution.
    """
    feats = extract(extractor, val.images, desc="overcluster")
    n, c, h, w = feats.shape
    x = feats.permute(0, 2, 3, 1).reshape(-1, c)
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
    if pca_dim:
        x = pca(x, pca_dim)
    device = module_device(extractor)
    x = x.to(device)
    metrics: dict[str, float] = {}
    shown = None
    for k in (val.num_classes, *ks):
        if k < val.num_classes:
            raise ValueError(f"overclustering K={k} is below the number of classes ({val.num_classes})")
        _, labels, _ = kmeans(x, k, iters, restarts, seed)
        cmap = labels.view(n, 1, h, w).float().cpu()
        up = F.interpolate(cmap, size=tuple(val.labels.shape[-2:]), mode="nearest")[:, 0].long()
        cm = confusion_matrix(val.labels, up, val.num_classes, k, val.ignore_index)
        mapping = hungarian_match(cm) if k == val.num_classes else many_to_one_match(cm)
        miou = segmentation_scores(remap_confusion(cm, mapping))["miou"]
        if k == val.num_classes:
            metrics["miou"] = miou
            picked = mapping[up[figure_indices(len(up))]]
            shown = torch.where(picked < 0, val.ignore_index, picked).to(torch.uint8)
        else:
            metrics[f"miou_k{k}"] = miou
    return SegResult(metrics, shown)


def patch_label_histograms(
    labels: torch.Tensor, num_classes: int, stride: int, ignore_index: int = 255, chunk: int = 64
) -> torch.Tensor:
    """Soft patch labels ``(N, K, h, w)``: the fraction of each class among the non-ignored pixels of each patch
    (all zeros for a fully ignored patch)."""
    out = []
    for s in range(0, len(labels), chunk):
        lab = labels[s : s + chunk]
        keep = lab != ignore_index
        onehot = F.one_hot(torch.where(keep, lab, 0).long(), num_classes).permute(0, 3, 1, 2).float()
        onehot = onehot * keep[:, None]
        counts = F.avg_pool2d(onehot, stride)
        out.append(counts / counts.sum(1, keepdim=True).clamp_min(1e-12))
    return torch.cat(out)


def memory_rows(
    feats: torch.Tensor, soft: torch.Tensor, per_image: int, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The memory rows of a batch of images: L2-normalised patch features ``(S, C)`` and soft labels ``(S, K)``.

    Fully ignored patches are dropped. If ``per_image`` is below the number of patches per image, each image keeps
    the ``per_image`` patches with the lowest ``score * noise`` (``noise (N, h*w)`` in [0, 1)), where a patch's
    score sums the image-level frequencies of the classes it contains (rare classes are favoured).
    """
    n, c, h, w = feats.shape
    k = soft.shape[1]
    f = F.normalize(feats.flatten(2).transpose(1, 2), dim=-1)  # (N, hw, C)
    lab = soft.flatten(2).transpose(1, 2)  # (N, hw, K)
    labelled = lab.sum(-1) > 0
    if per_image < h * w:
        if noise is None or noise.shape != (n, h * w):
            raise ValueError(f"selecting {per_image} of {h * w} patches per image needs noise of shape {(n, h * w)}")
        freq = lab.sum(1) / lab.sum((1, 2)).clamp_min(1e-12)[:, None]  # (N, K)
        score = ((lab > 0).float() * freq[:, None, :]).sum(-1) * noise
        score = torch.where(labelled, score, torch.full_like(score, math.inf))
        idx = score.topk(per_image, dim=1, largest=False).indices
        f = f.gather(1, idx[..., None].expand(-1, -1, c))
        lab = lab.gather(1, idx[..., None].expand(-1, -1, k))
        labelled = labelled.gather(1, idx)
    return f[labelled], lab[labelled]


def memory_per_image(memory_size: int, images: int, patches: int) -> int:
    """Hummingbird's per-image budget: every patch if all fit in ``memory_size``, else ``memory_size // images``
    (at least one)."""
    return patches if images * patches <= memory_size else max(1, memory_size // images)


def build_memory(
    feats: torch.Tensor,
    soft: torch.Tensor,
    memory_size: int,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hummingbird memory of in-memory features ``(N, C, h, w)`` and soft labels ``(N, K, h, w)``
    (:func:`memory_rows` with :func:`memory_per_image`; the noise drawn from one generator seeded with ``seed``)."""
    n, _, h, w = feats.shape
    per_image = memory_per_image(memory_size, n, h * w)
    noise = torch.rand((n, h * w), generator=torch.Generator().manual_seed(seed)) if per_image < h * w else None
    return memory_rows(feats, soft, per_image, noise)


def _top_k(q: torch.Tensor, memory: torch.Tensor, k: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` cosine similarities and memory indices of normalised queries, over memory blocks of
    ``block`` rows merged as they go (one block when the memory fits)."""
    best = None
    for m in range(0, len(memory), block):
        sims, idx = (q @ memory[m : m + block].T).topk(min(k, len(memory) - m, block), dim=1)
        if best is not None:
            sims, order = torch.cat([best[0], sims], 1).topk(k, dim=1)
            idx = torch.cat([best[1], idx + m], 1).gather(1, order)
        best = (sims, idx)
    return best


def knn_soft_labels(
    queries: torch.Tensor,
    memory: torch.Tensor,
    memory_labels: torch.Tensor,
    k: int = 30,
    temperature: float = 0.02,
    budget: int = 2**24,
) -> torch.Tensor:
    """Exact cosine top-``k`` retrieval: ``softmax(cos / T)``-weighted neighbour labels ``(M, K)``.

    Similarity blocks hold at most ``budget`` entries: queries in chunks of ``budget // len(memory)`` while that is
    at least 256 rows, else chunks of 256 queries against memory blocks of ``budget // 256`` rows (a running
    top-k), so a large memory is read once per 256 queries rather than once per query."""
    if len(memory) == 0:
        raise ValueError("the retrieval memory is empty: every training patch is ignored")
    q = F.normalize(queries, dim=-1)
    k = min(k, len(memory))
    chunk = budget // len(memory)
    block = len(memory) if chunk >= 256 else max(k, budget // 256)
    chunk = max(chunk, 256)
    out = []
    for s in range(0, len(q), chunk):
        sims, idx = _top_k(q[s : s + chunk], memory, k, block)
        weights = torch.softmax(sims / temperature, dim=1)
        out.append(torch.einsum("mk,mkc->mc", weights, memory_labels[idx]))
    return torch.cat(out)


def retrieval_scores(
    feats: torch.Tensor, memory: torch.Tensor, memory_labels: torch.Tensor, k: int = 30, temperature: float = 0.02
) -> torch.Tensor:
    """Soft labels ``(B, K, h, w)`` of query feature maps ``(B, C, h, w)`` by :func:`knn_soft_labels` (computed on
    the memory's device)."""
    b, c, h, w = feats.shape
    q = feats.to(memory.device).flatten(2).transpose(1, 2).reshape(-1, c)
    return knn_soft_labels(q, memory, memory_labels, k, temperature).view(b, h, w, -1).permute(0, 3, 1, 2)


def incontext(
    extractor: FeatureExtractor,
    train: SegSet,
    val: SegSet,
    memory_size: int = 20480,
    k: int = 30,
    temperature: float = 0.02,
    matching: str = "hungarian",
    seed: int = 0,
) -> SegResult:
    """Hummingbird dense nearest-neighbour retrieval: each validation patch takes the softmax-weighted soft labels
    of its ``k`` nearest memory patches; label maps are bilinearly upsampled and arg-maxed. Metric ``miou``
    (after ``matching``: ``hungarian`` for parity with open-hummingbird-eval, or ``identity``)."""
    ftrain = extract(extractor, train.images, desc="incontext memory")
    soft = patch_label_histograms(train.labels, train.num_classes, extractor.stride, train.ignore_index)
    mem, mem_labels = build_memory(ftrain, soft, memory_size, seed)
    device = module_device(extractor)
    mem, mem_labels = mem.to(device), mem_labels.to(device)
    fval = extract(extractor, val.images, desc="incontext queries")
    logits = partial(retrieval_scores, memory=mem, memory_labels=mem_labels, k=k, temperature=temperature)
    cm, preds = _predict_and_score(logits, fval, val, val.num_classes)
    return SegResult({"miou": matched_scores(cm, matching)["miou"], "memory": float(len(mem))}, preds)


def train_supervised(
    encoder: nn.Module,
    train: SegSet,
    steps: int,
    batch_size: int = 32,
    lr: float = 5e-4,
    weight_decay: float = 0.04,
    seed: int = 0,
) -> nn.Module:
    """Supervised upper bound: train ``encoder`` (in place) with a 1x1 linear head on its last patch tokens,
    upsampled to half the label resolution, by cross-entropy on ``train`` (random horizontal flips; AdamW, 5 %
    linear warm-up then cosine). Returns the encoder in eval mode."""
    from motionrep.eval.features import ViTFeatures, to_float_images

    device = module_device(encoder)
    features = ViTFeatures(encoder)
    head = nn.Conv2d(features.dim, train.num_classes, 1).to(device)
    params = [*encoder.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / max(steps, 1)))
    )
    gen = torch.Generator().manual_seed(seed)
    all_labels = downsample_labels(train.labels, 2)
    hw = tuple(all_labels.shape[-2:])
    encoder.train()
    for _ in tqdm(range(steps), desc="supervised", leave=False, disable=not dist.is_main() or None):
        idx = torch.randint(len(train), (min(batch_size, len(train)),), generator=gen)
        images, labels = to_float_images(train.images[idx].to(device)), all_labels[idx].to(device)
        flip = torch.rand(len(idx), generator=gen).to(device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        labels = torch.where(flip[:, None, None], labels.flip(-1), labels)
        logits = F.interpolate(head(features(images)), size=hw, mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, labels, ignore_index=train.ignore_index)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return encoder.eval()
