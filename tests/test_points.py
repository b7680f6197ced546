import numpy as np
import pytest
import torch
import torch.nn.functional as F

from motionrep.ops.points import (
    ViewTransform,
    grid_points,
    grid_to_pixel,
    inside,
    pixel_to_grid,
    sample_tokens,
    token_index,
)


def test_grid_roundtrip_and_pixel_centres():
    xy = torch.rand(50, 2) * 40 - 5
    assert torch.allclose(grid_to_pixel(pixel_to_grid(xy, (32, 24)), (32, 24)), xy, atol=1e-5)
    # pixel centre 0 and W-1 map to the centres of the first/last cells of [-1, 1]
    uv = pixel_to_grid(torch.tensor([[0.0, 0.0], [31.0, 23.0]]), (32, 24))
    assert torch.allclose(uv, torch.tensor([[-1 + 1 / 32, -1 + 1 / 24], [1 - 1 / 32, 1 - 1 / 24]]))


def test_grid_sample_reads_the_pixel_at_integer_coordinates():
    img = torch.arange(6 * 5, dtype=torch.float32).view(1, 1, 6, 5)
    xy = torch.tensor([[3.0, 2.0], [0.0, 5.0]])
    out = F.grid_sample(img, pixel_to_grid(xy, (5, 6))[None, None], align_corners=False)
    assert out.flatten().tolist() == [img[0, 0, 2, 3].item(), img[0, 0, 5, 0].item()]


@pytest.mark.parametrize(
    "t",
    [
        ViewTransform.resize((64, 48), (32, 96)),
        ViewTransform.crop((5, 7, 20, 30), (64, 64)),
        ViewTransform.hflip(64),
        ViewTransform.crop((3, 1, 10, 12), (40, 40)).then(ViewTransform.hflip(40)),
    ],
)
def test_transform_inverse_and_composition(t):
    xy = torch.randn(20, 2) * 10 + 20
    assert torch.allclose(t.inverse().apply(t.apply(xy)), xy, atol=1e-4)
    u = ViewTransform.resize((10, 10), (20, 30))
    assert torch.allclose(t.then(u).apply(xy), u.apply(t.apply(xy)), atol=1e-4)


def test_formulas():
    xy = torch.tensor([[10.0, 4.0]])
    assert torch.allclose(ViewTransform.resize((64, 64), (32, 32)).apply(xy), (xy + 0.5) * 0.5 - 0.5)
    assert torch.allclose(
        ViewTransform.crop((4, 2, 16, 8), (32, 32)).apply(xy),
        torch.tensor([[(10 - 4 + 0.5) * 2 - 0.5, (4 - 2 + 0.5) * 4 - 0.5]]),
    )
    assert ViewTransform.hflip(64).apply(xy).tolist() == [[53.0, 4.0]]
    flip = ViewTransform.hflip(64)
    assert torch.equal(flip.then(flip).apply(xy), xy)


def test_sampling_grid_renders_crop_and_flip_exactly():
    img = torch.rand(1, 3, 24, 32)
    view = ViewTransform.crop((8, 4, 16, 12)).then(ViewTransform.hflip(16))
    out = F.grid_sample(img, view.sampling_grid((12, 16), (24, 32)), align_corners=False)
    assert torch.allclose(out, img[:, :, 4:16, 8:24].flip(-1), atol=1e-5)
    # a point and its pixel move together
    src = torch.tensor([[10.0, 6.0]])
    dst = view.apply(src).round().long()[0]
    assert torch.allclose(out[0, :, dst[1], dst[0]], img[0, :, 6, 10], atol=1e-5)


def test_flow_vectors_under_view():
    view = ViewTransform.crop((0, 0, 32, 16), (64, 64)).then(ViewTransform.hflip(64))
    flow = torch.tensor([1.0, 1.0]).view(1, 2, 1, 1).expand(1, 2, 3, 3)
    out = view.apply_vectors(flow, channel_dim=1)
    assert out[0, :, 0, 0].tolist() == [-2.0, 4.0]
    p = torch.tensor([[3.0, 2.0]])
    assert torch.allclose(view.apply(p + 1.0) - view.apply(p), torch.tensor([[-2.0, 4.0]]))


def test_inside_and_grid_points():
    assert inside(torch.tensor([[-0.5, 0.0], [63.49, 0.0], [63.5, 0.0], [0.0, -0.51]]), (64, 64)).tolist() == [
        True,
        True,
        False,
        False,
    ]
    arr = np.array([[-0.5, 0.0], [63.5, 0.0]])
    assert inside(arr, (64, 64)).tolist() == [True, False] and isinstance(inside(arr, (64, 64)), np.ndarray)
    g = grid_points(8, (64, 64))
    assert g.shape == (64, 2)
    assert g[0].tolist() == [3.5, 3.5] and g[1].tolist() == [11.5, 3.5]  # x varies fastest
    assert token_index(g, 8, (8, 8)).tolist() == list(range(64))


@pytest.mark.parametrize("patch", [8, 14, 16])
def test_token_index_equals_nearest_upsampling(patch):
    s = 4
    tokens = torch.randn(1, s * s, 5)
    fmap = tokens.transpose(1, 2).reshape(1, 5, s, s)
    up = F.interpolate(fmap, scale_factor=patch, mode="nearest")
    xy = torch.rand(1, 100, 2) * (s * patch - 1)
    rc = xy.round().long()
    expected = up[0, :, rc[0, :, 1], rc[0, :, 0]].T
    got = sample_tokens(tokens, xy, patch, (s, s), mode="token")[0]
    # ties at exact half pixels are the only allowed disagreement
    tie = ((xy[0] + 0.5) % patch).eq(0).any(-1) | (xy[0] % 1 == 0.5).any(-1)
    assert torch.allclose(got[~tie], expected[~tie])


def test_horizontal_motion_reads_along_columns():
    xy = torch.tensor([[[3.5, 3.5], [11.5, 3.5], [19.5, 3.5]]])
    idx = token_index(xy, 8, (4, 4))
    assert idx.tolist() == [[0, 1, 2]]  # same row, successive columns


def test_bilinear_at_token_centres_returns_token():
    tokens = torch.randn(2, 16, 3)
    centres = grid_points(4, (32, 32)).expand(2, -1, -1)
    got = sample_tokens(tokens, centres, 8, (4, 4), mode="bilinear")
    assert torch.allclose(got, tokens, atol=1e-5)
    with pytest.raises(ValueError):
        sample_tokens(tokens, centres, 8, (4, 4), mode="cubic")
