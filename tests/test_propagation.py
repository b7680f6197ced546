"""Video protocols: label propagation (J&F) and feature-based point tracking, with oracle features."""

import pytest
import torch

from motionrep.data.labeled import Clip, VideoSet
from motionrep.eval import propagation as P
from motionrep.eval import tracking as TR
from motionrep.eval.features import PixelFeatures
from motionrep.eval.metrics import boundary_f


def test_neighbourhood_against_loop():
    near = P.neighbourhood((3, 4), 1.5)
    for a in range(12):
        for b in range(12):
            ra, ca, rb, cb = a // 4, a % 4, b // 4, b % 4
            assert bool(near[a, b]) == ((ra - rb) ** 2 + (ca - cb) ** 2 <= 2.25)


def moving_square_clip(t_len: int = 4, size: int = 32, step: int = 8) -> Clip:
    """A red 8x8 square (object 3), one token, moving right one token per frame over a blue background."""
    frames = torch.zeros(t_len, 3, size, size, dtype=torch.uint8)
    frames[:, 2] = 200
    masks = torch.zeros(t_len, size, size, dtype=torch.long)
    for t in range(t_len):
        x0 = step * t
        frames[t, :, 8:16, x0 : x0 + 8] = torch.tensor([200, 0, 0], dtype=torch.uint8).view(3, 1, 1)
        masks[t, 8:16, x0 : x0 + 8] = 3
    return Clip(frames, masks)


def test_propagation_follows_a_moving_object():
    clip = moving_square_clip()
    res = P.propagation(PixelFeatures(8), VideoSet([clip]), topk=3, radius=1.5, context=2)
    # Exact token labels at every frame, bilinearly upsampled: patch corners blur into the background.
    token_onehot = torch.nn.functional.avg_pool2d((clip.masks == 3).float()[:, None], 8)
    soft = torch.cat([1 - token_onehot, token_onehot], dim=1)
    up = torch.nn.functional.interpolate(soft, size=(32, 32), mode="bilinear", align_corners=False)
    oracle = up.argmax(1) * 3
    assert torch.equal(res.predictions.long(), oracle)
    inter = ((oracle[1:] == 3) & (clip.masks[1:] == 3)).flatten(1).sum(1).double()
    union = ((oracle[1:] == 3) | (clip.masks[1:] == 3)).flatten(1).sum(1).double()
    assert res.metrics["j"] == pytest.approx(100 * (inter / union).mean().item())
    f = boundary_f(oracle[1:] == 3, clip.masks[1:] == 3)
    assert res.metrics["f"] == pytest.approx(100 * f.mean().item())
    assert res.metrics["jf"] == pytest.approx(0.5 * (res.metrics["j"] + res.metrics["f"]))


def test_propagation_radius_limits_the_search():
    # With a zero radius a patch only looks at the same position in the context: the object is lost.
    res = P.propagation(PixelFeatures(8), VideoSet([moving_square_clip()]), topk=1, radius=0.0, context=1)
    assert res.metrics["j"] < 50


def test_token_centres_follow_the_point_convention():
    c = TR.token_centres((2, 3), 8)
    assert torch.equal(c[0], torch.tensor([3.5, 3.5])) and torch.equal(c[5], torch.tensor([19.5, 11.5]))


def test_track_points_with_oracle_features():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(32, 6, 6, generator=g)
    # Frame t: content shifted right by t tokens and down by t // 2 tokens (periodic, so every token matches).
    feats = torch.stack([torch.roll(base, shifts=(t // 2, t), dims=(1, 2)) for t in range(4)])
    centres = TR.token_centres((6, 6), 8)
    queries = centres[[0, 7, 14, 20]]
    tracks, visible = TR.track_points(feats, queries, stride=8, radius=1, temperature=0.005)
    for t in range(4):
        expected = queries + torch.tensor([8.0 * t, 8.0 * (t // 2)])
        expected = torch.remainder(expected + 0.5 - 4, 48) + 4 - 0.5  # wrap around the periodic frame
        assert torch.allclose(tracks[t], expected, atol=1e-2)
    assert visible.all()


def test_tracking_protocol_on_a_moving_square():
    clip = moving_square_clip(t_len=3)
    centre = torch.tensor([[3.5, 11.5]])  # the centre of the square's token
    clip.tracks = torch.stack([centre + torch.tensor([8.0 * t, 0.0]) for t in range(3)])
    clip.visible = torch.ones(3, 1, dtype=torch.bool)
    res = TR.tracking(PixelFeatures(8), VideoSet([clip]), visibility_threshold=0.0)
    assert res.metrics["delta_avg"] > 70 and res.metrics["occlusion_accuracy"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="no ground-truth tracks"):
        TR.tracking(PixelFeatures(8), VideoSet([moving_square_clip()]))


def _rank_video_metrics(clips):
    prop = P.propagation(PixelFeatures(8), VideoSet(clips), topk=3, radius=1.5, context=2)
    return prop.metrics


def test_propagation_two_ranks_equal_one():
    from tests.distributed import run_ranks

    clips = [moving_square_clip(), moving_square_clip(t_len=3), moving_square_clip(step=0)]
    single = _rank_video_metrics(clips)
    for result in run_ranks(_rank_video_metrics, 2, clips):
        assert result == pytest.approx(single)
