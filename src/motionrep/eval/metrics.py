"""Evaluation metrics, vectorised and reducible across ranks.

Segmentation is scored from a confusion matrix ``cm[gt, pred]`` (rows: ground-truth classes, columns: predicted
classes or clusters) accumulated with ``torch.bincount`` and summed over ranks; cluster ids are mapped to classes by
Hungarian matching (one-to-one) or many-to-one matching before scoring. Flow is scored by end-point error sums;
video object segmentation by DAVIS J (region IoU) and F (boundary F-measure within a pixel tolerance).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from motionrep.train import dist

IGNORE_INDEX = 255


def confusion_matrix(
    target: torch.Tensor, pred: torch.Tensor, num_classes: int, num_pred: int | None = None, ignore_index: int = 255
) -> torch.Tensor:
    """``cm[c, k]`` = number of pixels of class ``c`` predicted as ``k``; pixels labelled ``ignore_index`` skipped.

    ``target`` and ``pred`` are integer tensors of the same shape; ``num_pred`` defaults to ``num_classes``.
    """
    if target.shape != pred.shape:
        raise ValueError(f"target {tuple(target.shape)} and prediction {tuple(pred.shape)} differ in shape")
    num_pred = num_classes if num_pred is None else num_pred
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    if t.numel() and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"labels outside [0, {num_classes}) other than ignore index {ignore_index}")
    if p.numel() and (p.min() < 0 or p.max() >= num_pred):
        raise ValueError(f"predictions outside [0, {num_pred})")
    return torch.bincount(t * num_pred + p, minlength=num_classes * num_pred).view(num_classes, num_pred)


def reduce_confusion(cm: torch.Tensor) -> torch.Tensor:
    """Sum a per-rank confusion matrix over ranks (identity in a single process)."""
    return dist.all_reduce_sum(cm)


def segmentation_scores(cm: torch.Tensor) -> dict[str, float]:
    """mIoU and pixel accuracy (percentages) from ``cm[gt, pred]`` of shape ``(C, C')`` with ``C' >= C``.

    Columns ``>= C`` are predictions that match no class (they count as errors). IoU of class ``c`` is
    ``tp / (gt + pred - tp)``; classes with an empty union (absent from both) are left out of the mean.
    """
    cm = cm.double()
    c = cm.shape[0]
    tp = torch.diagonal(cm[:, :c])
    gt = cm.sum(1)
    pred = cm[:, :c].sum(0)
    union = gt + pred - tp
    present = union > 0
    iou = tp[present] / union[present]
    total = gt.sum()
    return {
        "miou": 100.0 * iou.mean().item() if present.any() else math.nan,
        "acc": 100.0 * (tp.sum() / total).item() if total > 0 else math.nan,
    }


def per_class_iou(cm: torch.Tensor) -> torch.Tensor:
    """IoU per class (NaN where the class is absent from both prediction and ground truth)."""
    cm = cm.double()
    c = cm.shape[0]
    tp = torch.diagonal(cm[:, :c])
    union = cm.sum(1) + cm[:, :c].sum(0) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))


def hungarian_match(cm: torch.Tensor) -> torch.Tensor:
    """One-to-one map from predicted ids to classes maximising matched pixels: ``(K,)`` long, ``-1`` if unmatched."""
    rows, cols = linear_sum_assignment(cm.double().cpu().numpy(), maximize=True)
    mapping = torch.full((cm.shape[1],), -1, dtype=torch.long)
    mapping[torch.as_tensor(cols, dtype=torch.long)] = torch.as_tensor(rows, dtype=torch.long)
    return mapping


def many_to_one_match(cm: torch.Tensor) -> torch.Tensor:
    """Map each predicted id to the class on which its precision is highest: ``(K,)`` long."""
    return cm.argmax(0).cpu()


def remap_confusion(cm: torch.Tensor, mapping: torch.Tensor) -> torch.Tensor:
    """Merge the columns of ``cm (C, K)`` by ``mapping`` into ``(C, C + 1)``; column ``C`` collects unmatched ids."""
    c = cm.shape[0]
    target = torch.where(mapping < 0, torch.full_like(mapping, c), mapping).to(cm.device)
    out = cm.new_zeros(c, c + 1)
    return out.index_add_(1, target, cm)


def matched_scores(cm: torch.Tensor, mode: str) -> dict[str, float]:
    """Scores of a cluster confusion matrix ``(C, K)`` after ``"hungarian"``, ``"many_to_one"`` or ``"identity"``."""
    if mode == "identity":
        return segmentation_scores(cm)
    if mode == "hungarian":
        mapping = hungarian_match(cm)
    elif mode == "many_to_one":
        mapping = many_to_one_match(cm)
    else:
        raise ValueError(f"unknown matching {mode!r}; expected identity, hungarian or many_to_one")
    return segmentation_scores(remap_confusion(cm, mapping))


FLOW_THRESHOLDS = (1.0, 3.0, 5.0)


def flow_error_sums(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``[sum EPE, #EPE<1, #EPE<3, #EPE<5, #valid]`` (float64) over flow fields ``(..., 2, H, W)``.

    ``valid (..., H, W)`` selects the scored pixels (all pixels when ``None``). Sum over ranks with
    :func:`reduce_sums`, then turn into scores with :func:`flow_scores`.
    """
    if pred.shape != gt.shape or pred.shape[-3] != 2:
        raise ValueError(f"flow shapes must match and be (..., 2, H, W); got {tuple(pred.shape)} / {tuple(gt.shape)}")
    epe = torch.linalg.vector_norm((pred - gt).double(), dim=-3)
    valid = torch.ones_like(epe, dtype=torch.bool) if valid is None else valid.bool()
    e = epe[valid]
    counts = [(e < t).sum() for t in FLOW_THRESHOLDS]
    return torch.stack([e.sum(), *[c.double() for c in counts], torch.tensor(float(e.numel()), dtype=e.dtype)])


def reduce_sums(sums: torch.Tensor) -> torch.Tensor:
    """Sum per-rank metric sums over ranks."""
    return dist.all_reduce_sum(sums)


def flow_scores(sums: torch.Tensor) -> dict[str, float]:
    """``epe`` (pixels) and ``px1``/``px3``/``px5`` (percent of valid pixels with EPE below 1/3/5 px)."""
    n = sums[-1].item()
    if n == 0:
        return {"epe": math.nan, **{f"px{int(t)}": math.nan for t in FLOW_THRESHOLDS}}
    out = {"epe": sums[0].item() / n}
    for i, t in enumerate(FLOW_THRESHOLDS):
        out[f"px{int(t)}"] = 100.0 * sums[1 + i].item() / n
    return out


def boundary(mask: torch.Tensor) -> torch.Tensor:
    """Inner boundary of binary masks ``(N, H, W)``: foreground pixels with a 4-neighbour outside the mask.

    The image border is not a boundary (outside pixels replicate the edge, as DAVIS's ``seg2bmap``).
    """
    m = F.pad(mask.float()[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    centre = m[:, 1:-1, 1:-1]
    eroded = torch.stack([centre, m[:, :-2, 1:-1], m[:, 2:, 1:-1], m[:, 1:-1, :-2], m[:, 1:-1, 2:]]).amin(0)
    return (centre > 0.5) & (eroded < 0.5)


def _disk(radius: int, device) -> torch.Tensor:
    r = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= radius**2).float()


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of masks ``(N, H, W)`` by a disk of ``radius`` pixels."""
    if radius <= 0:
        return mask.bool()
    k = _disk(radius, mask.device)[None, None]
    return F.conv2d(mask.float()[:, None], k, padding=radius)[:, 0] > 0.5


def boundary_tolerance(hw: tuple[int, int], fraction: float = 0.008) -> int:
    """DAVIS boundary tolerance in pixels: ``ceil(fraction * image diagonal)`` (at least 1)."""
    return max(1, math.ceil(fraction * math.hypot(*hw)))


def region_j(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """DAVIS J: IoU of binary masks ``(N, H, W)`` → ``(N,)``; two empty masks score 1."""
    p, g = pred.bool().flatten(1), gt.bool().flatten(1)
    inter = (p & g).sum(1).double()
    union = (p | g).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def boundary_f(pred: torch.Tensor, gt: torch.Tensor, tolerance: int | None = None) -> torch.Tensor:
    """DAVIS F: boundary F-measure of binary masks ``(N, H, W)`` with a matching tolerance in pixels → ``(N,)``.

    Precision: fraction of predicted boundary pixels within ``tolerance`` of the true boundary; recall the
    converse. Both boundaries empty → 1; exactly one empty → 0.
    """
    tol = boundary_tolerance(tuple(gt.shape[-2:])) if tolerance is None else tolerance
    bp, bg = boundary(pred.bool()), boundary(gt.bool())
    n_p, n_g = bp.flatten(1).sum(1).double(), bg.flatten(1).sum(1).double()
    hit_p = (bp & dilate(bg, tol)).flatten(1).sum(1).double()
    hit_g = (bg & dilate(bp, tol)).flatten(1).sum(1).double()
    precision = torch.where(n_p > 0, hit_p / n_p.clamp_min(1), torch.ones_like(n_p))
    recall = torch.where(n_g > 0, hit_g / n_g.clamp_min(1), torch.ones_like(n_g))
    f = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12), 0.0)
    both_empty = (n_p == 0) & (n_g == 0)
    one_empty = (n_p == 0) ^ (n_g == 0)
    return torch.where(both_empty, torch.ones_like(f), torch.where(one_empty, torch.zeros_like(f), f))


def jf_sums(pred: torch.Tensor, gt: torch.Tensor, tolerance: int | None = None) -> torch.Tensor:
    """``[sum J, sum F, #masks]`` over binary masks ``(N, H, W)``; reduce over ranks, then :func:`jf_scores`."""
    j, f = region_j(pred, gt), boundary_f(pred, gt, tolerance)
    return torch.stack([j.sum(), f.sum(), torch.tensor(float(j.numel()), dtype=torch.float64)])


def jf_scores(sums: torch.Tensor) -> dict[str, float]:
    """``j``, ``f`` and their mean ``jf`` in percent."""
    n = sums[2].item()
    if n == 0:
        return {"jf": math.nan, "j": math.nan, "f": math.nan}
    j, f = 100.0 * sums[0].item() / n, 100.0 * sums[1].item() / n
    return {"jf": 0.5 * (j + f), "j": j, "f": f}
