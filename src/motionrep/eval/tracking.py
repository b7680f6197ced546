"""Feature-based point tracking along ground-truth tracks.

Each visible frame-0 point of a ground-truth track is a query: its feature is bilinearly sampled from frame 0's
dense features. In every later frame the query is compared (cosine) with all tokens; the position is the
soft-argmax (``softmax(cos / temperature)``) over the tokens within ``radius`` tokens of the best match, and the
point is predicted visible when the best cosine reaches ``visibility_threshold``. Scored with the TAP-Vid metrics
of :mod:`motionrep.tracking.metrics` (frame 0, the query frame, excluded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from motionrep.data.labeled import VideoSet
from motionrep.eval.features import FeatureExtractor, extract, module_device
from motionrep.eval.metrics import reduce_sums
from motionrep.ops.points import grid_points, sample_tokens
from motionrep.tracking.metrics import tapvid_metrics
from motionrep.train import dist


@dataclass
class TrackingResult:
    metrics: dict[str, float]
    tracks: torch.Tensor  # (T, N, 2) predicted tracks of the first clip
    visible: torch.Tensor  # (T, N)


def token_centres(grid_hw: tuple[int, int], stride: int, device=None) -> torch.Tensor:
    """Pixel centres (x, y) of the tokens of an ``(h, w)`` grid, row-major: ``(h*w, 2)``."""
    h, w = grid_hw
    xs = grid_points(w, (w * stride, w * stride), device)[:w, 0]
    ys = grid_points(h, (h * stride, h * stride), device)[:h, 0]
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)


def track_points(
    feats: torch.Tensor,
    queries: torch.Tensor,
    stride: int,
    radius: int = 1,
    temperature: float = 0.05,
    visibility_threshold: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Track ``queries (N, 2)`` (x, y pixels in frame 0) through ``feats (T, C, h, w)``.

    Returns ``tracks (T, N, 2)`` and ``visible (T, N)``; frame 0 returns the queries, visible.
    """
    t_len, c, h, w = feats.shape
    tokens = F.normalize(feats.flatten(2).transpose(1, 2), dim=-1)  # (T, hw, C)
    q = F.normalize(sample_tokens(tokens[:1], queries[None], stride, (h, w), mode="bilinear")[0], dim=-1)
    sims = torch.einsum("nc,tkc->tnk", q, tokens)  # (T, N, hw)
    centres = token_centres((h, w), stride, feats.device)
    best_sim, best = sims.max(-1)
    near = (centres[best][..., None, :] - centres).abs().amax(-1) <= radius * stride + 1e-3  # (T, N, hw)
    weights = torch.softmax((sims / temperature).masked_fill(~near, float("-inf")), dim=-1)
    tracks = weights @ centres
    visible = best_sim >= visibility_threshold
    tracks[0] = queries
    visible[0] = True
    return tracks, visible


TRACKING_KEYS = ("delta_avg", "occlusion_accuracy", "average_jaccard")


def tracking(
    extractor: FeatureExtractor,
    videos: VideoSet,
    radius: int = 1,
    temperature: float = 0.05,
    visibility_threshold: float = 0.5,
) -> TrackingResult:
    """Track every ground-truth track visible in frame 0 of each clip. Metrics (percent, averaged over clips as
    TAP-Vid does): ``delta_avg``, ``occlusion_accuracy``, ``average_jaccard``; clips are split over ranks."""
    device = module_device(extractor)
    sums = torch.zeros(2 * len(TRACKING_KEYS), dtype=torch.float64)  # per key: sum over clips, number of clips
    shown = (torch.zeros(0, 0, 2), torch.zeros(0, 0, dtype=torch.bool))
    part = dist.shard(len(videos))
    for ci in range(part.start, part.stop):
        clip = videos.clips[ci]
        if clip.tracks is None or clip.visible is None:
            raise ValueError(f"clip {clip.name or ci} has no ground-truth tracks for the tracking protocol")
        keep = clip.visible[0]
        gt_tracks, gt_vis = clip.tracks[:, keep], clip.visible[:, keep]
        if gt_tracks.shape[1] == 0:
            continue
        feats = extract(extractor, clip.frames, distributed=False, desc="tracking").to(device)
        tracks, vis = track_points(
            feats, gt_tracks[0].to(device), extractor.stride, radius, temperature, visibility_threshold
        )
        clip_metrics = tapvid_metrics(tracks.cpu().numpy(), vis.cpu().numpy(), gt_tracks.numpy(), gt_vis.numpy())
        for i, key in enumerate(TRACKING_KEYS):
            if not math.isnan(clip_metrics[key]):
                sums[2 * i] += clip_metrics[key]
                sums[2 * i + 1] += 1
        if ci == 0:
            shown = (tracks.cpu(), vis.cpu())
    sums = reduce_sums(sums)
    metrics = {
        key: 100.0 * sums[2 * i].item() / sums[2 * i + 1].item() if sums[2 * i + 1] > 0 else math.nan
        for i, key in enumerate(TRACKING_KEYS)
    }
    return TrackingResult(metrics, *shown)
