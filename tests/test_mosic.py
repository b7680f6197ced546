"""MoSiC core in plain tensors: coordinates, masking, targets, cross-entropy, loss normalisation, cluster usage."""

import math

import pytest
import torch
import torch.nn.functional as F

from motionrep.methods.mosic_core import (
    Prototypes,
    cluster_cross_entropy,
    kept_mask,
    num_dropped,
    ot_assignments,
    random_keep,
    sample_tracks,
    scatter_kept,
    track_token_kept,
    usage_entropy,
    weighted_loss,
)
from motionrep.ops.sinkhorn import sinkhorn


def _coordinate_tokens(b: int, t: int, s: int) -> torch.Tensor:
    """Tokens (B, T, s*s, 2) whose features are their own (row, col)."""
    rows, cols = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    rc = torch.stack([rows, cols], dim=-1).reshape(1, 1, s * s, 2).float()
    return rc.expand(b, t, -1, -1).contiguous()


@pytest.mark.parametrize("mode", ["token", "bilinear"])
def test_horizontal_motion_reads_along_token_columns(mode):
    p, s, t = 8, 6, 5
    tokens = _coordinate_tokens(1, t, s)
    start = torch.tensor([[p * 1 + 3.5, p * 4 + 3.5], [p * 0 + 3.5, p * 2 + 3.5]])  # token centres (x, y)
    steps = torch.arange(t, dtype=torch.float32)
    tracks = start[None].expand(t, -1, -1).clone()
    tracks[..., 0] += p * steps[:, None]  # one token to the right per frame, no vertical motion
    feats = sample_tracks(tokens, tracks[None], p, (s, s), mode=mode)[0]  # (T, N, 2) = (row, col)
    assert torch.allclose(
        feats[..., 0], start[:, 1].sub(p / 2 - 0.5).div(p).expand(t, -1), atol=1e-5
    )  # row = y / p: fixed
    expected_col = start[:, 0].sub(p / 2 - 0.5).div(p)[None] + steps[:, None]
    assert torch.allclose(feats[..., 1], expected_col, atol=1e-5)  # column advances with x


def test_token_sampling_indexes_row_by_y_and_column_by_x():
    p, s = 8, 4
    tokens = _coordinate_tokens(1, 1, s)
    tracks = torch.tensor([[[[17.0, 2.0], [2.0, 17.0], [31.4, 24.5]]]])  # (x, y)
    feats = sample_tracks(tokens, tracks, p, (s, s))[0, 0]
    # row = floor((y + 0.5) / p), col = floor((x + 0.5) / p), computed by hand
    assert feats.tolist() == [[0.0, 2.0], [2.0, 0.0], [3.0, 3.0]]


def test_random_keep_drops_floor_count_per_clip():
    for n, r in [(64, 0.1), (256, 0.1), (64, 0.4), (16, 0.0)]:
        keep = random_keep(5, n, r)
        drop = math.floor(n * r)
        assert num_dropped(n, r) == drop
        assert keep.shape == (5, n - drop)
        assert (keep.diff(dim=1) > 0).all() and keep.min() >= 0 and keep.max() < n  # sorted, unique
    assert not torch.equal(random_keep(1, 64, 0.4), random_keep(1, 64, 0.4))
    with pytest.raises(ValueError, match="mask ratio"):
        num_dropped(64, 1.0)


def test_kept_mask_and_scatter_round_trip():
    keep = torch.tensor([[0, 2, 3], [1, 2, 3]])
    mask = kept_mask(keep, 4)
    assert mask.tolist() == [[True, False, True, True], [False, True, True, True]]
    vals = torch.arange(1, 7, dtype=torch.float32).view(2, 3, 1)
    full = scatter_kept(vals, keep, 4)[..., 0]
    assert full.tolist() == [[1.0, 0.0, 2.0, 3.0], [0.0, 4.0, 5.0, 6.0]]


def test_track_token_kept_uses_the_token_under_each_point():
    p, s = 8, 4
    kept = torch.ones(1, s * s, dtype=torch.bool)
    kept[0, 1 * s + 2] = False  # token (row 1, col 2) dropped
    tracks = torch.tensor([[[[20.0, 12.0], [3.0, 3.0]], [[3.0, 12.0], [20.0, 12.0]]]])  # (B=1, T=2, N=2, 2)
    got = track_token_kept(kept, tracks, p, (s, s))
    assert got.tolist() == [[[False, True], [True, False]]]


def test_bilinear_reads_need_every_interpolated_token_kept():
    p, s = 8, 4
    kept = torch.ones(1, s * s, dtype=torch.bool)
    kept[0, 1 * s + 2] = False  # token (row 1, col 2), centre at pixel (19.5, 11.5)
    # (x, y): centre of the kept neighbour (row 1, col 1); nearly halfway to the dropped token; the dropped
    # token's centre; a point inside the kept token (row 1, col 1) but interpolating from the dropped one
    tracks = torch.tensor([[[[11.5, 11.5], [15.4, 11.5], [19.5, 11.5], [14.0, 11.5]]]])
    assert track_token_kept(kept, tracks, p, (s, s), "token").tolist() == [[[True, True, False, True]]]
    assert track_token_kept(kept, tracks, p, (s, s), "bilinear").tolist() == [[[True, False, False, False]]]


def test_cross_entropy_matches_torch_reference_hard_and_soft():
    b, t, n, k, tau = 2, 3, 5, 7, 0.1
    student = torch.randn(b, 1, n, k)
    q = torch.softmax(torch.randn(b, t, n, k), dim=-1)
    ce = cluster_cross_entropy(student, q, tau)
    assert ce.shape == (b, t, n)
    logits = (student / tau).expand(b, t, n, k).reshape(-1, k)
    ref = F.cross_entropy(logits, q.argmax(-1).reshape(-1), reduction="none").view(b, t, n)
    assert torch.allclose(ce, ref, atol=1e-5)
    soft = cluster_cross_entropy(student, q, tau, soft=True)
    ref_soft = F.cross_entropy(logits, q.reshape(-1, k), reduction="none").view(b, t, n)
    assert torch.allclose(soft, ref_soft, atol=1e-5)
    # targets broadcast along frames (propagated frame-0 assignment) against per-frame student scores
    per_frame = torch.randn(b, t, n, k)
    ce_prop = cluster_cross_entropy(per_frame, q[:, :1], tau)
    ref_prop = F.cross_entropy(
        (per_frame / tau).reshape(-1, k), q[:, :1].argmax(-1).expand(b, t, n).reshape(-1), reduction="none"
    )
    assert torch.allclose(ce_prop, ref_prop.view(b, t, n), atol=1e-5)


def test_loss_normalisation_visible_vs_all_entries():
    ce = torch.full((2, 4, 6), 1.7)
    ones = torch.ones_like(ce)
    assert torch.allclose(weighted_loss(ce, ones, "visible"), weighted_loss(ce, ones, "all_entries"))
    half = ones.clone()
    half[..., :3] = 0.0
    visible, every = weighted_loss(ce, half, "visible"), weighted_loss(ce, half, "all_entries")
    assert torch.allclose(visible, torch.tensor(1.7)) and torch.allclose(visible, 2.0 * every)
    assert weighted_loss(ce, torch.zeros_like(ce), "visible") == 0.0  # no visible entry: 0, not NaN
    with pytest.raises(ValueError, match="loss_norm"):
        weighted_loss(ce, ones, "mean")


def test_ot_assignments_are_joint_over_frames_and_tracks():
    scores = F.normalize(torch.randn(2, 3, 8, 16), dim=-1) @ F.normalize(torch.randn(5, 16), dim=-1).t()
    q = ot_assignments(scores, 0.05, 10)
    assert q.shape == scores.shape
    assert torch.allclose(q.sum(-1), torch.ones(2, 3, 8), atol=1e-5)
    assert torch.allclose(q, sinkhorn(scores.reshape(-1, 5), 0.05, 10).view_as(q))


def test_usage_entropy_balanced_and_collapsed():
    k = 4
    balanced = F.one_hot(torch.arange(8) % k, k).float()
    collapsed = F.one_hot(torch.zeros(8, dtype=torch.long), k).float()
    assert torch.isclose(usage_entropy(balanced), torch.tensor(1.0))
    assert usage_entropy(collapsed) == 0.0


def test_prototypes_renormalise_in_place():
    protos = Prototypes(6, 8)
    with torch.no_grad():
        protos.weight.mul_(3.0)
    protos.normalize_()
    assert torch.allclose(protos.weight.norm(dim=1), torch.ones(6))
    z = F.normalize(torch.randn(4, 8), dim=-1)
    assert torch.allclose(protos(z), z @ protos.weight.t())
