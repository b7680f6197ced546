"""DAVIS-style semi-supervised video object segmentation by label propagation through feature affinities.

The first frame's object masks are given. For every later frame ``t``, each patch takes a weighted average of the
soft labels of patches in the context (frame 0 with its true labels, plus the ``context`` previous frames with
their propagated labels): only context patches within ``radius`` tokens of the patch are candidates, the ``topk``
most similar (cosine) are kept and weighted by ``softmax(cos / temperature)``. Soft labels are bilinearly
upsampled to pixels and arg-maxed. Scored by DAVIS J&F per object (mean over frames 1..T-1, then over objects).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from motionrep.data.labeled import VideoSet
from motionrep.eval.features import FeatureExtractor, extract, module_device
from motionrep.eval.metrics import boundary_f, jf_scores, reduce_sums, region_j
from motionrep.train import dist


@dataclass
class PropagationResult:
    metrics: dict[str, float]
    predictions: torch.Tensor  # (T, H, W) uint8 object ids of the first clip


def neighbourhood(grid_hw: tuple[int, int], radius: float, device=None) -> torch.Tensor:
    """Bool ``(h*w, h*w)``: token pairs whose centres are within ``radius`` tokens (Euclidean)."""
    h, w = grid_hw
    rows = torch.arange(h, device=device).repeat_interleave(w).float()
    cols = torch.arange(w, device=device).repeat(h).float()
    d2 = (rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2
    return d2 <= radius**2


def propagate(
    feats: torch.Tensor,
    first_labels: torch.Tensor,
    out_hw: tuple[int, int],
    topk: int = 5,
    radius: float = 3.0,
    context: int = 7,
    temperature: float = 0.1,
) -> torch.Tensor:
    """Propagate soft token labels ``first_labels (K, h, w)`` through a clip's features ``(T, C, h, w)``.

    Returns predicted ids ``(T, H, W)`` at ``out_hw`` (frame 0 is the arg-max of the given labels).
    """
    t_len, c, h, w = feats.shape
    f = F.normalize(feats.flatten(2).transpose(1, 2), dim=-1)  # (T, hw, C)
    near = neighbourhood((h, w), radius, feats.device)
    labels = [first_labels.flatten(1).T]  # (hw, K) per frame
    for t in range(1, t_len):
        ctx = [0, *range(max(1, t - context), t)]
        keys = f[ctx].reshape(-1, c)
        sims = f[t] @ keys.T  # (hw, n_ctx * hw)
        sims = sims.masked_fill(~near.repeat(1, len(ctx)), float("-inf"))
        top, idx = sims.topk(min(topk, sims.shape[1]), dim=1)
        weights = torch.softmax(top / temperature, dim=1)
        ctx_labels = torch.cat([labels[i] for i in ctx])  # (n_ctx * hw, K)
        labels.append(torch.einsum("nk,nkc->nc", weights, ctx_labels[idx]))
    soft = torch.stack(labels).transpose(1, 2).reshape(t_len, -1, h, w)
    return F.interpolate(soft, size=out_hw, mode="bilinear", align_corners=False).argmax(1)


def _clip_jf_sums(pred: torch.Tensor, gt: torch.Tensor, ids: torch.Tensor, tolerance: int | None) -> torch.Tensor:
    """Per-object J and F averaged over frames 1..T-1, summed over objects: ``[sum J, sum F, #objects]``."""
    p = pred[1:, None] == ids[None, :, None, None]  # (T-1, n_obj, H, W)
    g = gt[1:, None] == ids[None, :, None, None]
    hw = p.shape[-2:]
    j = region_j(p.reshape(-1, *hw), g.reshape(-1, *hw)).view(-1, len(ids)).mean(0)
    f = boundary_f(p.reshape(-1, *hw), g.reshape(-1, *hw), tolerance).view(-1, len(ids)).mean(0)
    return torch.stack([j.sum(), f.sum(), torch.tensor(float(len(ids)), dtype=torch.float64)])


def propagation(
    extractor: FeatureExtractor,
    videos: VideoSet,
    topk: int = 5,
    radius: float = 3.0,
    context: int = 7,
    temperature: float = 0.1,
    tolerance: int | None = None,
) -> PropagationResult:
    """First-frame label propagation on every clip of ``videos`` (objects: non-zero ids of frame 0's mask).

    Metrics ``jf``, ``j``, ``f`` in percent; clips are split over ranks and the sums reduced.
    """
    device = module_device(extractor)
    sums = torch.zeros(3, dtype=torch.float64)
    shown = torch.zeros(0, dtype=torch.uint8)
    part = dist.shard(len(videos))
    for ci in range(part.start, part.stop):
        clip = videos.clips[ci]
        ids = torch.unique(clip.masks[0])
        ids = ids[ids != 0]
        if len(ids) == 0:
            continue
        feats = extract(extractor, clip.frames, distributed=False, desc="propagation").to(device)
        # Relabel the first frame to 0 (background), 1..n (objects) and build soft token labels.
        dense = (clip.masks[0][None] == ids[:, None, None]).float()
        onehot = torch.cat([1.0 - dense.sum(0, keepdim=True).clamp_max(1.0), dense])
        first = F.adaptive_avg_pool2d(onehot[None], feats.shape[-2:])[0].to(device)
        pred_local = propagate(feats, first, tuple(clip.masks.shape[-2:]), topk, radius, context, temperature).cpu()
        lut = torch.cat([torch.zeros(1, dtype=ids.dtype), ids])
        pred = lut[pred_local]
        sums += _clip_jf_sums(pred, clip.masks, ids, tolerance)
        if ci == 0:
            shown = pred.to(torch.uint8)
    sums = reduce_sums(sums)
    return PropagationResult(jf_scores(sums), shown)
