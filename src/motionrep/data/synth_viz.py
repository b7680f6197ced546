"""Pictures of synthetic clips: frames, colour-coded labels and flow (for docs and quick inspection)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from motionrep.data.synth_render import SynthVideo
from motionrep.data.synth_scene import PALETTE


def flow_to_rgb(flow: np.ndarray, max_norm: float | None = None) -> np.ndarray:
    """Colour-code flow (2, H, W) as (H, W, 3) uint8: hue = direction, saturation = magnitude / ``max_norm``.

    Rightward motion is red, downward (+y) yellow-green, leftward cyan, upward blue-violet; zero flow is white.
    """
    dx, dy = flow[0], flow[1]
    mag = np.hypot(dx, dy)
    scale = max_norm if max_norm is not None else max(float(mag.max()), 1e-6)
    hue = (np.arctan2(dy, dx) / (2 * np.pi)) % 1.0
    sat = np.clip(mag / scale, 0.0, 1.0)
    k = (np.array([5.0, 3.0, 1.0]) + hue[..., None] * 6.0) % 6.0  # HSV -> RGB with V = 1
    rgb = 1.0 - sat[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return np.rint(rgb * 255).astype(np.uint8)


def clip_figure(video: SynthVideo, path: str | Path, frames: int = 6) -> None:
    """Save a grid: rows = RGB, semantic labels, instances, forward flow; columns = evenly spaced frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t_idx = np.linspace(0, len(video.flow) - 1, frames).round().astype(int)
    max_norm = float(np.hypot(video.flow[:, 0], video.flow[:, 1]).max())
    inst_colours = np.random.default_rng(0).integers(40, 255, (int(video.instance.max()) + 1, 3)).astype(np.uint8)
    inst_colours[0] = 0
    rows = {
        "frame": [video.frames[t] for t in t_idx],
        "semantic": [PALETTE[video.semantic[t]] for t in t_idx],
        "instance": [inst_colours[video.instance[t]] for t in t_idx],
        "flow": [flow_to_rgb(video.flow[t], max_norm) for t in t_idx],
    }
    fig, axes = plt.subplots(len(rows), frames, figsize=(1.6 * frames, 1.6 * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for c, img in enumerate(images):
            ax = axes[r, c]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label)
            if r == 0:
                ax.set_title(f"t={t_idx[c]}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
