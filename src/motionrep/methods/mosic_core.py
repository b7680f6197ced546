"""The computational core of MoSiC in plain tensors (no engine, no backbone): prototypes, token masking, features
at track points, optimal-transport targets and the weighted clustering loss.

Shapes: ``B`` clips, ``T`` frames, ``N`` tracks, ``K`` prototypes, ``s2`` patch tokens per frame. Tracks are (x, y)
pixel coordinates (see :mod:`motionrep.ops.points`, the one coordinate module).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from motionrep.ops.points import sample_tokens, token_index
from motionrep.ops.sinkhorn import sinkhorn
from motionrep.train import dist

ASSIGNMENTS = ("per_frame_joint", "propagate_frame0")
LOSS_NORMS = ("visible", "all_entries")


class Prototypes(nn.Module):
    """``K`` learnable unit-norm prototypes; scores are cosines with L2-normalised projections."""

    def __init__(self, num: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(F.normalize(torch.randn(num, dim), dim=1))

    @torch.no_grad()
    def normalize_(self) -> None:
        """Re-project every prototype onto the unit sphere (in place, outside autograd); done every step."""
        self.weight.copy_(F.normalize(self.weight, dim=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Cosine scores in fp32 (outside autocast, so that they stay within [-1, 1] for Sinkhorn)."""
        with torch.autocast(z.device.type, enabled=False):
            return F.normalize(z.float(), dim=-1) @ self.weight.float().t()


def num_dropped(num_tokens: int, ratio: float) -> int:
    """``⌊num_tokens · ratio⌋`` tokens are dropped per clip."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return math.floor(num_tokens * ratio + 1e-9)


def random_keep(batch: int, num_tokens: int, ratio: float, device: torch.device | None = None) -> torch.Tensor:
    """Sorted indices (batch, num_tokens - ⌊num_tokens·ratio⌋) of the patch tokens each clip keeps (global RNG)."""
    drop = num_dropped(num_tokens, ratio)
    order = torch.rand(batch, num_tokens, device=device).argsort(dim=1)
    return order[:, drop:].sort(dim=1).values


def kept_mask(keep: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Bool (B, num_tokens): True where the token index is in ``keep`` (B, K_keep)."""
    mask = torch.zeros(keep.shape[0], num_tokens, dtype=torch.bool, device=keep.device)
    return mask.scatter_(1, keep, True)


def scatter_kept(tokens: torch.Tensor, keep: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Place kept-token outputs (B, K_keep, D) back on the full (B, num_tokens, D) grid; dropped tokens are zero."""
    out = tokens.new_zeros(tokens.shape[0], num_tokens, tokens.shape[-1])
    return out.scatter(1, keep[..., None].expand_as(tokens), tokens)


def sample_tracks(
    tokens: torch.Tensor, tracks: torch.Tensor, patch: int, grid_hw: tuple[int, int], mode: str = "token"
) -> torch.Tensor:
    """Patch features (B, T, s2, D) at track points (B, T, N, 2) → (B, T, N, D), frame by frame."""
    b, t, n, _ = tracks.shape
    flat = sample_tokens(tokens.flatten(0, 1), tracks.flatten(0, 1), patch, grid_hw, mode=mode)
    return flat.view(b, t, n, -1)


def track_token_kept(
    kept: torch.Tensor, tracks: torch.Tensor, patch: int, grid_hw: tuple[int, int], mode: str = "token"
) -> torch.Tensor:
    """Whether every token a track point's feature is read from survived masking: kept (B, s2) bool, tracks
    (B, T, N, 2) → (B, T, N) bool (the kept set is shared by all frames of a clip).

    ``token``: the token containing the point. ``bilinear``: every token with a non-zero interpolation weight (the
    kept mask sampled like the features equals 1).
    """
    b, t, n, _ = tracks.shape
    if mode == "bilinear":
        mask = kept.float()[:, None, :, None].expand(b, t, -1, 1)
        return sample_tracks(mask, tracks, patch, grid_hw, mode="bilinear")[..., 0] > 1.0 - 1e-6
    idx = token_index(tracks, patch, grid_hw).view(b, t * n)
    return kept.gather(1, idx).view(b, t, n)


def ot_assignments(scores: torch.Tensor, epsilon: float, iterations: int, log_domain: bool = False) -> torch.Tensor:
    """Balanced Sinkhorn-Knopp plan over every (b, t, n) column on every rank jointly: (B, T, N, K) → (B, T, N, K),
    each row a distribution over the K prototypes (fp32, no gradient)."""
    flat = scores.reshape(-1, scores.shape[-1])
    return sinkhorn(flat, epsilon, iterations, log_domain=log_domain).view(scores.shape)


def cluster_cross_entropy(
    student_scores: torch.Tensor, targets: torch.Tensor, temperature: float, soft: bool = False
) -> torch.Tensor:
    """Per-entry cross-entropy between ``softmax(student_scores / τ)`` and the OT targets.

    ``student_scores`` (B, Ts, N, K) and ``targets`` (B, Tt, N, K) broadcast over frames (Ts or Tt may be 1); the
    result is (B, T, N). Hard targets (default) are the argmax over K; soft targets use the whole plan row.
    """
    logp = F.log_softmax(student_scores.float() / temperature, dim=-1)
    shape = torch.broadcast_shapes(logp.shape, targets.shape)
    if soft:
        return -(targets.float() * logp).sum(-1).expand(shape[:-1])
    hard = targets.argmax(dim=-1).expand(shape[:-1])
    return -logp.expand(shape).gather(-1, hard[..., None])[..., 0]


def weighted_loss(ce: torch.Tensor, weights: torch.Tensor, norm: str = "visible") -> torch.Tensor:
    """Σ w·CE normalised over the weighted entries (``visible``) or over all entries (``all_entries``, released).

    ``visible`` divides by max(global Σ w / world size, 1), so that the gradients averaged over ranks equal those of
    one rank normalising by the global Σ w.
    """
    total = (weights * ce).sum()
    if norm == "visible":
        return total / dist.all_reduce_mean(weights.sum().detach()).clamp_min(1.0)
    if norm == "all_entries":
        return total / ce.numel()
    raise ValueError(f"unknown loss_norm {norm!r}; expected one of {LOSS_NORMS}")


def usage_entropy(targets: torch.Tensor) -> torch.Tensor:
    """Entropy of the histogram of hard cluster assignments over all ranks, divided by log K (1 = balanced)."""
    k = targets.shape[-1]
    counts = torch.bincount(targets.argmax(-1).flatten(), minlength=k).float()
    p = dist.all_reduce_sum(counts)
    p = p / p.sum().clamp_min(1.0)
    return -(p * p.clamp_min(1e-12).log()).sum() / math.log(k)
