"""Views: crop boxes, exact geometry of rendered views (points, flow, tracks), pair-view sharing, photometric ops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from motionrep.data.photometric import PhotometricConfig, global_transform_1, global_transform_2, local_transform
from motionrep.data.views import (
    ClipView,
    CropView,
    PairViewsConfig,
    render,
    render_clip,
    sample_box,
    sample_pair_views,
    transform_flow,
    transform_from_tensor,
    transform_tracks,
    transforms_tensor,
)


def blob(wh: tuple[int, int], centre: tuple[float, float], sigma: float = 4.0) -> torch.Tensor:
    """(1, 3, H, W) Gaussian dot at a sub-pixel (x, y) position (pixel centres at integers)."""
    ys, xs = torch.meshgrid(torch.arange(wh[1]).float(), torch.arange(wh[0]).float(), indexing="ij")
    img = torch.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * sigma**2))
    return img.expand(1, 3, -1, -1).contiguous()


def centroid(img: torch.Tensor) -> torch.Tensor:
    """Intensity-weighted (x, y) centre of a (1, 3, H, W) image."""
    w = img[0, 0]
    ys, xs = torch.meshgrid(torch.arange(w.shape[0]).float(), torch.arange(w.shape[1]).float(), indexing="ij")
    return torch.stack([(w * xs).sum(), (w * ys).sum()]) / w.sum()


def test_sample_box_respects_area_ratio_and_bounds():
    rng = np.random.default_rng(0)
    boxes = np.array([sample_box(rng, (200, 160), (0.2, 0.4)) for _ in range(2000)])
    x0, y0, w, h = boxes.T
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 200).all() and (y0 + h <= 160).all()
    area = w * h / (200 * 160)
    assert area.min() > 0.19 and area.max() < 0.41
    assert abs(area.mean() - 0.3) < 0.01  # uniform area fraction
    log_aspect = np.log(w / h)
    assert log_aspect.min() > math.log(3 / 4) - 0.05 and log_aspect.max() < math.log(4 / 3) + 0.05
    assert abs(log_aspect.mean()) < 0.01  # log-uniform, symmetric range
    assert len({tuple(b) for b in boxes[:, :2]}) > 1000  # positions vary


def test_sample_box_falls_back_to_centre_crop():
    rng = np.random.default_rng(0)
    assert sample_box(rng, (100, 20), (1.5, 2.0)) == ((100 - 27) // 2, 0, 27, 20)  # aspect clamped to 4/3
    assert sample_box(rng, (60, 50), (1.5, 2.0)) == (0, 0, 60, 50)


@pytest.mark.parametrize("seed", range(6))
def test_rendered_dot_lands_where_the_transform_says(seed):
    rng = np.random.default_rng(seed)
    wh = (160, 120)
    point = (float(rng.uniform(50, 110)), float(rng.uniform(40, 80)))
    frame = blob(wh, point)
    x0, y0 = int(rng.integers(0, 30)), int(rng.integers(0, 20))
    box = (x0, y0, int(rng.integers(100, 160 - x0)), int(rng.integers(90, 120 - y0)))
    size = int(rng.choice([48, 224]))  # downscale and upscale
    view = CropView(box, (size, size), flip=bool(seed % 2))
    out = render(frame, view, "bicubic")
    expected = view.transform.apply(torch.tensor(point))
    scale = size / box[2]
    assert torch.allclose(centroid(out), expected, atol=0.03 * max(scale, 1.0) + 0.05)
    # the view's transform agrees with an independent formula for crop -> resize -> flip
    x = (point[0] - box[0] + 0.5) * size / box[2] - 0.5
    if view.flip:
        x = size - 1 - x
    assert math.isclose(expected[0].item(), x, abs_tol=1e-4)


def test_clip_view_squash_flip_crop_moves_dot_and_tracks():
    wh = (96, 54)
    point = (60.3, 30.7)
    view = ClipView(wh, (64, 64), True, (8, 4, 40, 48), (64, 64))
    out = render_clip(blob(wh, point, sigma=3.0), view)
    expected = view.transform.apply(torch.tensor(point))
    assert torch.allclose(centroid(out), expected, atol=0.1)
    tracks, in_crop = transform_tracks(torch.tensor([[point, (1.0, 1.0)]]), view.transform, (64, 64))
    assert torch.allclose(tracks[0, 0], expected) and in_crop.tolist() == [[True, False]]


@pytest.mark.parametrize("flip", [False, True])
def test_flow_under_a_view_matches_the_flow_of_the_views(flip):
    wh = (160, 120)
    p0, d = (70.0, 60.0), (5.5, -3.25)
    frames = torch.cat([blob(wh, p0), blob(wh, (p0[0] + d[0], p0[1] + d[1]))])
    view = CropView((30, 20, 100, 90), (64, 64), flip)
    moved = centroid(render(frames[1:], view)) - centroid(render(frames[:1], view))
    flow = torch.tensor(d).view(1, 2, 1, 1).expand(1, 2, 120, 160)
    assert torch.allclose(transform_flow(flow, view)[0, :, 10, 10], moved, atol=0.05)


def test_transform_flow_of_an_affine_field():
    """Bilinear resampling of an affine field is exact: compare with the field evaluated at the view's pixels."""
    h, w = 60, 80
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    field = lambda x, y: torch.stack([0.1 * x - 0.05 * y + 2.0, 0.02 * x + 0.03 * y - 1.0])  # noqa: E731
    box, out = (10, 6, 50, 40), (25, 20)
    view = CropView(box, out, flip=True)
    got = transform_flow(field(xs, ys)[None], view)[0]
    oy, ox = torch.meshgrid(torch.arange(out[1]).float(), torch.arange(out[0]).float(), indexing="ij")
    sx, sy = out[0] / box[2], out[1] / box[3]
    src_x = (out[0] - 1 - ox + 0.5) / sx - 0.5 + box[0]  # undo flip, then resize and crop
    src_y = (oy + 0.5) / sy - 0.5 + box[1]
    expected = field(src_x, src_y) * torch.tensor([-sx, sy]).view(2, 1, 1)
    interior = (slice(1, -1), slice(1, -1))
    assert torch.allclose(got[:, interior[0], interior[1]], expected[:, interior[0], interior[1]], atol=1e-4)


def test_pair_views_share_what_the_recipe_shares():
    cfg = PairViewsConfig.paper()
    rng = np.random.default_rng(0)
    for _ in range(50):
        views = sample_pair_views(rng, (1280, 720), cfg)
        assert not views.motion.flip and views.motion.out_wh == (224, 224)
        area = views.motion.box[2] * views.motion.box[3] / (1280 * 720)
        assert 0.19 < area < 0.41
        ix, iy, iw, ih = views.init
        assert 0.045 < iw * ih / (1280 * 720) < 0.205
        for v in (*views.globals, *views.locals[0], *views.locals[1]):
            x0, y0, w, h = v.box
            assert ix <= x0 and iy <= y0 and x0 + w <= ix + iw and y0 + h <= iy + ih
        assert [v.out_wh for v in views.globals] == [(224, 224)] * 2
        assert len(views.locals[0]) == len(views.locals[1]) == 8 and views.locals[0][0].out_wh == (96, 96)
    flips = [
        v.flip for _ in range(200) for v in sample_pair_views(rng, (128, 128), PairViewsConfig.miniature()).globals
    ]
    assert 0.4 < np.mean(flips) < 0.6


def test_transforms_tensor_round_trip():
    view = CropView((3, 4, 30, 20), (16, 16), flip=True)
    back = transform_from_tensor(transforms_tensor([view.transform])[0])
    for key in ("sx", "tx", "sy", "ty"):
        assert math.isclose(getattr(back, key), getattr(view.transform, key), rel_tol=1e-6)


def _fraction(mask: torch.Tensor) -> float:
    return mask.float().mean().item()


def test_photometric_is_independent_per_image_and_in_range():
    images = torch.rand(1, 3, 24, 24).expand(16, -1, -1, -1).contiguous()
    for make in (global_transform_1, global_transform_2, local_transform):
        out = make()(images)
        assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
        distinct = {tuple(o.flatten()[:8].tolist()) for o in out}
        assert len(distinct) > 8


def test_photometric_probabilities():
    n = 400
    constant = torch.full((n, 3, 16, 16), 0.7)
    no_colour = PhotometricConfig(jitter_p=0.0, grayscale_p=0.0)
    solarized = global_transform_2(no_colour)(constant)[:, 0, 8, 8] < 0.5  # 0.7 -> 0.3
    assert 0.14 < _fraction(solarized) < 0.26
    assert _fraction(global_transform_1(no_colour)(constant)[:, 0, 8, 8] < 0.5) == 0.0
    coloured = torch.rand(n, 3, 1, 1).expand(-1, -1, 16, 16).contiguous()
    gray = global_transform_1(PhotometricConfig(jitter_p=0.0))(coloured)
    is_gray = (gray[:, 0] - gray[:, 1]).abs().amax((1, 2)) < 1e-6
    assert 0.14 < _fraction(is_gray) < 0.26
    checker = ((torch.arange(16)[:, None] + torch.arange(16)) % 2).float().expand(n, 3, -1, -1).contiguous()
    blurred = lambda out: (out - checker).abs().amax((1, 2, 3)) > 0.05  # noqa: E731
    assert _fraction(blurred(global_transform_1(no_colour)(checker))) > 0.85  # p 1.0 (sigma < ~0.35 barely blurs)
    assert _fraction(blurred(global_transform_2(no_colour)(checker))) < 0.35  # p 0.1, plus solarize p 0.2
    assert 0.3 < _fraction(blurred(local_transform(no_colour)(checker))) < 0.6  # p 0.5
