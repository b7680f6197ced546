"""Figures: flow colour wheel, PCA maps, overlays, grids, curves, and the HTML report."""

import numpy as np
import torch
from PIL import Image

from motionrep import viz
from motionrep.eval import report


def test_flow_colour_wheel_directions():
    flow = np.zeros((2, 1, 5), np.float32)
    flow[:, 0, 1] = (1, 0)  # right
    flow[:, 0, 2] = (-1, 0)  # left
    flow[:, 0, 3] = (0, 1)  # down
    flow[:, 0, 4] = (0.5, 0)  # half magnitude
    rgb = viz.flow_to_rgb(flow, max_norm=1.0)
    assert rgb.shape == (1, 5, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (255, 255, 255)  # zero flow is white
    assert tuple(rgb[0, 1]) == (255, 0, 0)  # +x is red (end of the MR segment wraps to red)
    r, g, b = rgb[0, 2].astype(int)
    assert r == 0 and g > 150 and b == 255  # -x is cyan-blue
    r, g, b = rgb[0, 3].astype(int)
    assert r == 255 and 100 < g < 255 and b == 0  # +y is orange-yellow
    assert tuple(rgb[0, 4]) == (255, 128, 128)  # half saturation towards white
    assert len(viz.COLOUR_WHEEL) == 55


def test_pca_rgb_follows_the_dominant_direction():
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(16, generator=g)
    coeff = torch.linspace(-1, 1, 16)
    feats = (coeff[:, None] * direction[None] * 10 + 0.01 * torch.randn(16, 16, generator=g)).T.reshape(1, 16, 4, 4)
    rgb = viz.pca_rgb(feats)
    assert rgb.shape == (1, 4, 4, 3) and rgb.min() >= 0 and rgb.max() <= 1
    first = torch.from_numpy(rgb[0, ..., 0].reshape(-1))
    assert abs(torch.corrcoef(torch.stack([first, coeff]))[0, 1]) > 0.99


def test_overlay_keeps_ignored_pixels():
    image = np.full((4, 4, 3), 100, np.uint8)
    labels = np.zeros((4, 4), np.int64)
    labels[0, 0] = 255
    out = viz.overlay_labels(image, labels, 3, alpha=0.5)
    assert tuple(out[0, 0]) == (100, 100, 100)
    expected = np.round(100 * 0.5 + viz.palette(3)[0] * 0.5).astype(np.uint8)
    assert np.array_equal(out[1, 1], expected)


def test_heatmap_and_to_uint8():
    img = viz.to_uint8(torch.ones(3, 8, 8) * 0.5)
    assert img.shape == (8, 8, 3) and img[0, 0, 0] == 128
    out = viz.heatmap(img, np.arange(4.0).reshape(2, 2))
    assert out.shape == (8, 8, 3) and not np.array_equal(out[0, 0], out[7, 7])


def test_grid_and_curves_write_pngs(tmp_path):
    img = np.zeros((8, 8, 3), np.uint8)
    p = viz.save_grid(tmp_path / "g.png", [[("a", img), ("b", img)], [("c", img)]])
    c = viz.plot_curves(tmp_path / "c.png", {"loss": ([1, 2, 3], [3.0, 2.0, 1.0])})
    assert Image.open(p).size[0] > 0 and Image.open(c).size[0] > 0


def test_report_table_marks_the_best_value(tmp_path):
    metrics = {
        "a": {"seg_linear.miou": 50.0, "flow_probe.epe": 2.0},
        "b": {"seg_linear.miou": 60.0, "flow_probe.epe": 3.0, "dis.epe": None},
    }
    path = report.write_report(tmp_path / "r.html", metrics, {"a": [("fig", "figures/x.png")]}, {"data": "x"})
    text = path.read_text()
    assert '<td class="best">60.00</td>' in text  # higher mIoU is better
    assert '<td class="best">2.00</td>' in text  # lower EPE is better
    assert "figures/x.png" in text and "–" in text
