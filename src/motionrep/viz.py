"""Figures: optical-flow colour wheel (Middlebury / Baker et al.), PCA maps of dense features, label overlays,
heatmaps, image grids and training curves. Images are uint8 ``(H, W, 3)`` numpy arrays; matplotlib runs on Agg.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _colour_wheel() -> np.ndarray:
    """The 55-entry Middlebury colour wheel (RY 15, YG 6, GC 4, CB 11, BM 13, MR 6), float RGB in [0, 255]."""
    segments = [
        (15, (255, 0, 0), (255, 255, 0)),
        (6, (255, 255, 0), (0, 255, 0)),
        (4, (0, 255, 0), (0, 255, 255)),
        (11, (0, 255, 255), (0, 0, 255)),
        (13, (0, 0, 255), (255, 0, 255)),
        (6, (255, 0, 255), (255, 0, 0)),
    ]
    rows = []
    for n, start, end in segments:
        t = np.arange(n)[:, None] / n
        rows.append(np.asarray(start) * (1 - t) + np.asarray(end) * t)
    return np.concatenate(rows)


COLOUR_WHEEL = _colour_wheel()


def flow_to_rgb(flow: np.ndarray | torch.Tensor, max_norm: float | None = None) -> np.ndarray:
    """Flow ``(2, H, W)`` (dx, dy) → uint8 ``(H, W, 3)``: hue = direction, saturation = magnitude / ``max_norm``.

    ``max_norm`` defaults to the largest magnitude in the field; use one value for fields shown side by side.
    Zero flow is white; +x (right) is red, +y (down) orange-yellow, -x cyan: the Middlebury convention.
    """
    f = flow.detach().cpu().numpy() if isinstance(flow, torch.Tensor) else np.asarray(flow)
    u, v = f[0].astype(np.float64), f[1].astype(np.float64)
    mag = np.hypot(u, v)
    scale = max_norm if max_norm is not None else max(float(mag.max()), 1e-9)
    u, v, mag = u / scale, v / scale, np.minimum(mag / scale, 1.0)
    ncols = len(COLOUR_WHEEL)
    angle = np.arctan2(-v, -u) / np.pi  # in [-1, 1]
    fk = (angle + 1) / 2 * (ncols - 1)
    k0 = np.floor(fk).astype(int) % ncols
    k1 = (k0 + 1) % ncols
    frac = (fk - np.floor(fk))[..., None]
    col = ((1 - frac) * COLOUR_WHEEL[k0] + frac * COLOUR_WHEEL[k1]) / 255.0
    col = 1 - mag[..., None] * (1 - col)
    return np.clip(np.round(col * 255), 0, 255).astype(np.uint8)


def pca_rgb(features: torch.Tensor) -> np.ndarray:
    """Dense features ``(N, C, h, w)`` → ``(N, h, w, 3)`` float in [0, 1]: the top 3 principal components of all
    cells jointly, each min-max scaled over the batch."""
    n, c, h, w = features.shape
    x = features.permute(0, 2, 3, 1).reshape(-1, c).double()
    x = x - x.mean(0)
    k = min(3, c)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    proj = x @ vh[:k].T
    if k < 3:
        proj = torch.cat([proj, proj.new_zeros(len(proj), 3 - k)], dim=1)
    lo, hi = proj.min(0).values, proj.max(0).values
    proj = (proj - lo) / (hi - lo).clamp_min(1e-12)
    return proj.view(n, h, w, 3).float().numpy()


def palette(n: int) -> np.ndarray:
    """``n`` distinct uint8 RGB colours (tab20 then a hashed fill)."""
    base = (np.asarray(plt.get_cmap("tab20").colors)[:, :3] * 255).astype(np.uint8)
    if n <= len(base):
        return base[:n]
    rng = np.random.default_rng(0)
    return np.concatenate([base, rng.integers(0, 256, (n - len(base), 3), dtype=np.uint8)])


def overlay_labels(
    image: np.ndarray, labels: np.ndarray, num_classes: int, alpha: float = 0.5, ignore_index: int = 255
) -> np.ndarray:
    """Blend class colours over ``image (H, W, 3)`` uint8; ``ignore_index`` pixels keep the image."""
    lab = np.asarray(labels).astype(np.int64)
    colours = palette(num_classes)[np.clip(lab, 0, num_classes - 1)].astype(np.float64)
    out = image.astype(np.float64) * (1 - alpha) + colours * alpha
    out = np.where((lab == ignore_index)[..., None], image, out)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def heatmap(image: np.ndarray, values: np.ndarray, alpha: float = 0.6, cmap: str = "inferno") -> np.ndarray:
    """Overlay a min-max scaled heatmap ``(h, w)`` (nearest-upsampled to the image) on ``image (H, W, 3)``."""
    v = np.asarray(values, np.float64)
    v = (v - v.min()) / max(v.max() - v.min(), 1e-12)
    ry, rx = image.shape[0] // v.shape[0], image.shape[1] // v.shape[1]
    v = np.kron(v, np.ones((max(ry, 1), max(rx, 1))))[: image.shape[0], : image.shape[1]]
    rgb = plt.get_cmap(cmap)(v)[..., :3] * 255
    return np.clip(np.round(image * (1 - alpha) + rgb * alpha), 0, 255).astype(np.uint8)


def to_uint8(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """A frame ``(3, H, W)`` tensor (uint8, or float in [0, 1]) or ``(H, W, 3)`` array → uint8 ``(H, W, 3)``."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.dim() == 3 and image.shape[0] == 3:
            image = image.permute(1, 2, 0)
        image = image.numpy()
    if image.dtype != np.uint8:
        image = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    return image


def save_grid(path: str | Path, rows: Sequence[Sequence[tuple[str, np.ndarray]]], cell: float = 2.0) -> Path:
    """Save a grid of titled images (rows of ``(title, image)``) as a PNG; images are shown without smoothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nrows, ncols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, cell * nrows), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(ncols):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(row):
                title, img = row[j]
                ax.imshow(img, interpolation="nearest")
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_curves(path: str | Path, curves: dict[str, tuple[Sequence[float], Sequence[float]]], title: str = "") -> Path:
    """Save line plots of ``name -> (steps, values)`` on one axis (log scale when all values are positive)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3))
    positive = True
    for name, (x, y) in curves.items():
        ax.plot(x, y, label=name, linewidth=1)
        positive &= bool(len(y)) and min(y) > 0
    if positive and curves:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=9)
    if curves:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
