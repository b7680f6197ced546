"""TAP-Vid point-tracking metrics (the official ``compute_tapvid_metrics`` definitions, query mode "first").

Per clip, a point is evaluated at the frames strictly after its query frame, which is the first frame where the
ground truth sees it (points never visible are not evaluated). With ``d`` the distance between predicted and true
positions and ``δ`` a threshold in pixels (1, 2, 4, 8, 16):

* ``pts_within_δ`` = #(gt visible and d < δ) / #(gt visible); ``delta_avg`` is its mean over thresholds;
* ``occlusion_accuracy`` = #(predicted visibility == gt visibility) / #(evaluated entries);
* ``jaccard_δ`` = TP / (TP + FN + FP), with TP = gt visible, predicted visible and d < δ; FN = gt visible but not
  TP; FP = predicted visible but gt occluded or d ≥ δ; ``average_jaccard`` is its mean over thresholds.

Thresholds are in pixels of the coordinates given; TAP-Vid itself evaluates at 256x256 (rescale with
:class:`motionrep.ops.points.ViewTransform` first to compare with published numbers). Clip values are averaged over
clips, as TAP-Vid does. Also reported, outside TAP-Vid: precision and recall of occlusion detection.
"""

from __future__ import annotations

import numpy as np

THRESHOLDS = (1, 2, 4, 8, 16)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def evaluation_mask(gt_visible: np.ndarray) -> np.ndarray:
    """(B, T, N) bool: frames strictly after each point's first visible frame ("first" query mode)."""
    seen = np.cumsum(gt_visible, axis=1) > 0
    first = np.concatenate([seen[:, :1], seen[:, 1:] & ~seen[:, :-1]], axis=1)
    return seen & ~first


def tapvid_metrics(
    pred_tracks: np.ndarray,
    pred_visible: np.ndarray,
    gt_tracks: np.ndarray,
    gt_visible: np.ndarray,
    thresholds: tuple[float, ...] = THRESHOLDS,
) -> dict[str, float]:
    """TAP-Vid metrics for tracks (T, N, 2) / visibility (T, N), or batches (B, T, N, 2) / (B, T, N).

    Returns fractions in [0, 1] (NaN where a clip has nothing to evaluate), averaged over the clips that define them.
    """
    pred_tracks, gt_tracks = np.asarray(pred_tracks, np.float64), np.asarray(gt_tracks, np.float64)
    pred_visible, gt_visible = np.asarray(pred_visible, bool), np.asarray(gt_visible, bool)
    if pred_tracks.ndim == 3:
        pred_tracks, gt_tracks, pred_visible, gt_visible = (
            x[None] for x in (pred_tracks, gt_tracks, pred_visible, gt_visible)
        )
    if pred_tracks.shape != gt_tracks.shape or pred_tracks.ndim != 4 or pred_tracks.shape[-1] != 2:
        raise ValueError(f"tracks must both be (T, N, 2) or (B, T, N, 2), got {pred_tracks.shape}, {gt_tracks.shape}")
    if pred_visible.shape != pred_tracks.shape[:-1] or gt_visible.shape != pred_visible.shape:
        raise ValueError(f"visibility must be {pred_tracks.shape[:-1]}, got {pred_visible.shape}, {gt_visible.shape}")

    ev = evaluation_mask(gt_visible)
    axes = (1, 2)
    per_clip: dict[str, np.ndarray] = {
        "occlusion_accuracy": _ratio(((pred_visible == gt_visible) & ev).sum(axes), ev.sum(axes)),
    }
    gt_pos = (gt_visible & ev).sum(axes)
    dist2 = np.sum((pred_tracks - gt_tracks) ** 2, axis=-1)
    within_all = dist2[None] < np.square(np.asarray(thresholds, np.float64))[:, None, None, None]  # (D, B, T, N)
    correct = within_all & gt_visible & ev
    tp = (correct & pred_visible).sum((2, 3))
    fp = ((~gt_visible | ~within_all) & pred_visible & ev).sum((2, 3))
    pts_within = _ratio(correct.sum((2, 3)), gt_pos)  # (D, B)
    jaccard = _ratio(tp, gt_pos + fp)
    for i, thr in enumerate(thresholds):
        per_clip[f"pts_within_{thr:g}"] = pts_within[i]
        per_clip[f"jaccard_{thr:g}"] = jaccard[i]
    per_clip["delta_avg"] = pts_within.mean(0)
    per_clip["average_jaccard"] = jaccard.mean(0)
    occluded = ~gt_visible & ev
    pred_occluded = ~pred_visible & ev
    per_clip["occlusion_precision"] = _ratio((pred_occluded & occluded).sum(axes), pred_occluded.sum(axes))
    per_clip["occlusion_recall"] = _ratio((pred_occluded & occluded).sum(axes), occluded.sum(axes))
    return {k: _nanmean(v) for k, v in per_clip.items()}


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")
