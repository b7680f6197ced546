"""Geometric views of frames: random-resized-crop boxes, crop → resize → flip rendering, and the exact
:class:`~motionrep.ops.points.ViewTransform` of every view.

Boxes are integer ``(x0, y0, w, h)`` in pixel-edge units of the source frame, so a crop is a slice and the resize
is ``F.interpolate(..., align_corners=False)`` — exactly the map ``ViewTransform.crop(box, out)`` describes. A flip
is ``tensor.flip(-1)`` = ``ViewTransform.hflip``. Points, flow vectors and tracks move through the same transform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from motionrep.ops.points import ViewTransform, inside

Box = tuple[int, int, int, int]


def sample_box(
    rng: np.random.Generator,
    wh: tuple[int, int],
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> Box:
    """A random-resized-crop box inside a ``wh`` frame (torchvision's recipe).

    Area fraction uniform in ``scale``, aspect ratio (w/h) log-uniform in ``ratio``; after ``attempts`` draws that do
    not fit, the largest centred box whose aspect is ``ratio`` clamped.
    """
    width, height = wh
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(attempts):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def sample_box_in(
    rng: np.random.Generator, region: Box, scale: tuple[float, float], ratio: tuple[float, float] = (3 / 4, 4 / 3)
) -> Box:
    """A random-resized-crop box inside ``region`` (area relative to the region), in frame coordinates."""
    x0, y0, w, h = sample_box(rng, (region[2], region[3]), scale, ratio)
    return region[0] + x0, region[1] + y0, w, h


@dataclass(frozen=True)
class CropView:
    """Crop ``box`` of the source frame, resize to ``out_wh``, then optionally flip horizontally."""

    box: Box
    out_wh: tuple[int, int]
    flip: bool = False

    @property
    def transform(self) -> ViewTransform:
        tf = ViewTransform.crop(self.box, self.out_wh)
        return tf.then(ViewTransform.hflip(self.out_wh[0])) if self.flip else tf


@dataclass(frozen=True)
class ClipView:
    """MoSiC's clip-level view: squash-resize the whole frame to ``resize_wh``, flip, crop ``box`` (in resized
    coordinates) and resize the crop to ``out_wh``."""

    src_wh: tuple[int, int]
    resize_wh: tuple[int, int]
    flip: bool
    box: Box
    out_wh: tuple[int, int]

    @property
    def transform(self) -> ViewTransform:
        tf = ViewTransform.resize(self.src_wh, self.resize_wh)
        if self.flip:
            tf = tf.then(ViewTransform.hflip(self.resize_wh[0]))
        return tf.then(ViewTransform.crop(self.box, self.out_wh))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images → float32 in [0, 1]."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def resize(images: torch.Tensor, out_wh: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Resize float ``(N, C, H, W)`` images (antialiased when downscaling); bicubic overshoot is clamped to [0, 1]."""
    if (images.shape[-1], images.shape[-2]) == tuple(out_wh):
        return images
    antialias = mode in ("bilinear", "bicubic")
    align = False if mode in ("bilinear", "bicubic") else None
    out = F.interpolate(images, size=(out_wh[1], out_wh[0]), mode=mode, antialias=antialias, align_corners=align)
    return out.clamp_(0.0, 1.0) if mode == "bicubic" else out


def crop(images: torch.Tensor, box: Box) -> torch.Tensor:
    """The ``box`` slice of ``(..., H, W)`` images."""
    x0, y0, w, h = box
    if x0 < 0 or y0 < 0 or x0 + w > images.shape[-1] or y0 + h > images.shape[-2]:
        raise ValueError(f"box {box} exceeds the {images.shape[-1]}x{images.shape[-2]} frame")
    return images[..., y0 : y0 + h, x0 : x0 + w]


def render(images: torch.Tensor, view: CropView, mode: str = "bicubic") -> torch.Tensor:
    """Render ``view`` of ``(N, 3, H, W)`` images (uint8 or float) as float ``(N, 3, h, w)`` in [0, 1]."""
    out = resize(to_float(crop(images, view.box)), view.out_wh, mode)
    return out.flip(-1) if view.flip else out


def render_clip(images: torch.Tensor, view: ClipView, mode: str = "bilinear") -> torch.Tensor:
    """Render a :class:`ClipView` of ``(T, 3, H, W)`` frames as float ``(T, 3, h, w)`` in [0, 1]."""
    out = resize(to_float(images), view.resize_wh, mode)
    if view.flip:
        out = out.flip(-1)
    return resize(crop(out, view.box), view.out_wh, mode)


def transform_flow(flow: torch.Tensor, view: CropView) -> torch.Tensor:
    """Flow ``(N, 2, H, W)`` (dx, dy in source pixels) seen in ``view``: resampled at the view's pixels (bilinear),
    vectors scaled (and negated under a flip) by the view's linear part."""
    field = F.interpolate(
        crop(flow, view.box), size=(view.out_wh[1], view.out_wh[0]), mode="bilinear", align_corners=False
    )
    if view.flip:
        field = field.flip(-1)
    return view.transform.apply_vectors(field, channel_dim=1)


def transform_tracks(tracks: torch.Tensor, tf: ViewTransform, out_wh: tuple[int, int]):
    """Tracks ``(..., 2)`` mapped into a view, and the bool mask of points inside it."""
    moved = tf.apply(tracks)
    return moved, inside(moved, out_wh)


def transforms_tensor(transforms: list[ViewTransform]) -> torch.Tensor:
    """Stack transforms as a ``(n, 4)`` float32 tensor of ``[sx, tx, sy, ty]``."""
    return torch.tensor([[t.sx, t.tx, t.sy, t.ty] for t in transforms], dtype=torch.float32)


def transform_from_tensor(row: torch.Tensor) -> ViewTransform:
    """Inverse of :func:`transforms_tensor` for one ``(4,)`` row."""
    sx, tx, sy, ty = (float(v) for v in row)
    return ViewTransform(sx, tx, sy, ty)


@dataclass(frozen=True)
class PairViewsConfig:
    """Crops of a Midway/DINO frame pair (midway.md §4.2–4.3). Areas are fractions of the full frame (motion,
    initial) or of the initial crop (global, local); aspect ratios are log-uniform in ``ratio``."""

    motion_size: int = 224
    motion_scale: tuple[float, float] = (0.2, 0.4)
    init_scale: tuple[float, float] = (0.05, 0.2)
    global_size: int = 224
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_size: int = 96
    local_scale: tuple[float, float] = (0.05, 0.4)
    n_local: int = 8
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    interpolation: str = "bicubic"
    photometric: bool = True

    @classmethod
    def paper(cls) -> PairViewsConfig:
        """The published recipe: 224/96 px, motion [0.2, 0.4], initial [0.05, 0.2], 8 local crops per frame."""
        return cls()

    @classmethod
    def miniature(cls) -> PairViewsConfig:
        """The CPU miniature on 64² frames (midway.md §17.2): 64/32 px, motion [0.4, 1], initial [0.25, 1], 4 local."""
        return cls(
            motion_size=64, motion_scale=(0.4, 1.0), init_scale=(0.25, 1.0), global_size=64, local_size=32, n_local=4
        )


@dataclass(frozen=True)
class PairViews:
    """The geometry of one pair's views: ``globals[c]`` is shared by both frames; ``locals[frame][j]``."""

    motion: CropView
    init: Box
    globals: tuple[CropView, CropView]
    locals: tuple[tuple[CropView, ...], tuple[CropView, ...]]


def sample_pair_views(rng: np.random.Generator, frame_wh: tuple[int, int], cfg: PairViewsConfig) -> PairViews:
    """Draw the motion box (no flip), the initial crop, 2 shared global views and per-frame local views."""
    motion = CropView(sample_box(rng, frame_wh, cfg.motion_scale, cfg.ratio), (cfg.motion_size,) * 2)
    init = sample_box(rng, frame_wh, cfg.init_scale, cfg.ratio)

    def view(scale: tuple[float, float], size: int) -> CropView:
        box = sample_box_in(rng, init, scale, cfg.ratio)
        return CropView(box, (size, size), bool(rng.random() < cfg.flip_p))

    globals_ = (view(cfg.global_scale, cfg.global_size), view(cfg.global_scale, cfg.global_size))
    locals_ = tuple(tuple(view(cfg.local_scale, cfg.local_size) for _ in range(cfg.n_local)) for _ in range(2))
    return PairViews(motion, init, globals_, locals_)


@dataclass(frozen=True)
class ClipViewsConfig:
    """MoSiC's clip view (mosic.md §3.2): squash to ``resize``², flip p ``flip_p``, random-resized crop of area
    ``crop_scale`` resized to ``size``²; a ``grid``² query grid on the cropped frame 0."""

    resize: int = 224
    size: int = 224
    crop_scale: tuple[float, float] = (0.4, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    grid: int = 16
    interpolation: str = "bilinear"

    @classmethod
    def paper(cls) -> ClipViewsConfig:
        return cls()

    @classmethod
    def miniature(cls) -> ClipViewsConfig:
        """64² frames, one query per 8-px token (mosic.md §15.2)."""
        return cls(resize=64, size=64, grid=8)


def sample_clip_view(rng: np.random.Generator, frame_wh: tuple[int, int], cfg: ClipViewsConfig) -> ClipView:
    flip = bool(rng.random() < cfg.flip_p)
    box = sample_box(rng, (cfg.resize, cfg.resize), cfg.crop_scale, cfg.ratio)
    return ClipView(tuple(frame_wh), (cfg.resize, cfg.resize), flip, box, (cfg.size, cfg.size))
