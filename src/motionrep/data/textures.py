"""Grey-level texture tiles for the synthetic world, and their continuous sampling.

Real textures come from the images bundled with scikit-image (no download); procedural ones are built from a fixed
seed. Every tile is float32 in [0, 1], band-limited (lightly blurred) so that a texel of about one pixel renders
without strong aliasing. Sampling is bilinear with mirror tiling, so any coordinate is valid and seams are continuous.
Texel ``(i, j)`` (row, column) sits at coordinate ``(x, y) = (j, i)``.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from scipy import ndimage

TILE = 256  # every tile is TILE x TILE (a power of two)
REAL_TEXTURES = {"grass": "grass", "gravel": "gravel", "brick": "brick", "craters": "moon"}
PROCEDURAL_TEXTURES = ("stripes", "checker", "dots", "marble", "hatch")
TEXTURE_NAMES = tuple(REAL_TEXTURES) + PROCEDURAL_TEXTURES


def _normalise(img: np.ndarray) -> np.ndarray:
    """Stretch the 1st-99th percentiles to [0, 1] and clip."""
    lo, hi = np.percentile(img, [1.0, 99.0])
    return np.clip((img - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def _real(name: str) -> np.ndarray:
    import skimage.data

    img = getattr(skimage.data, REAL_TEXTURES[name])().astype(np.float32)
    h, w = (img.shape[0] // 2) * 2, (img.shape[1] // 2) * 2
    img = img[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))  # 2x2 box downsampling
    return _normalise(ndimage.gaussian_filter(img, 0.6)[:TILE, :TILE])


def _procedural(name: str) -> np.ndarray:
    n = TILE
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    rng = np.random.default_rng(20240611)
    if name == "stripes":
        img = np.sin(2 * np.pi * x / 8.0)
    elif name == "checker":
        img = np.tanh(3.0 * np.sin(2 * np.pi * x / 12.0) * np.sin(2 * np.pi * y / 12.0))
    elif name == "dots":
        dx, dy = (x + 4.0) % 8.0 - 4.0, (y + 4.0) % 8.0 - 4.0
        img = np.clip(3.0 - np.hypot(dx, dy), 0.0, 1.0)
    elif name == "marble":
        fbm = sum(ndimage.gaussian_filter(rng.standard_normal((n, n)), s, mode="wrap") * s for s in (2.0, 4.0, 8.0))
        img = np.sin((x + y) / 5.0 + 6.0 * fbm / np.abs(fbm).max())
    elif name == "hatch":
        img = np.maximum(np.sin(2 * np.pi * (x + y) / 10.0), np.sin(2 * np.pi * (x - y) / 10.0))
    else:
        raise ValueError(f"unknown texture {name!r}; expected one of {TEXTURE_NAMES}")
    return _normalise(ndimage.gaussian_filter(img.astype(np.float32), 0.7, mode="wrap"))


@cache
def texture_bank() -> np.ndarray:
    """All tiles stacked, (len(TEXTURE_NAMES), TILE, TILE) float32, in the order of ``TEXTURE_NAMES`` (cached)."""
    bank = np.stack([_real(n) if n in REAL_TEXTURES else _procedural(n) for n in TEXTURE_NAMES])
    bank.setflags(write=False)
    return bank


@cache
def _mirrored_bank() -> np.ndarray:
    """The bank mirror-extended to period ``2 * TILE`` (a power of two), flattened: wrapping is a bitwise and."""
    bank = texture_bank()
    ext = np.concatenate([bank, bank[:, ::-1]], 1)
    return np.ascontiguousarray(np.concatenate([ext, ext[:, :, ::-1]], 2)).ravel()


def texture_id(name: str) -> int:
    if name not in TEXTURE_NAMES:
        raise ValueError(f"unknown texture {name!r}; expected one of {TEXTURE_NAMES}")
    return TEXTURE_NAMES.index(name)


def sample(tile_ids: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear samples of bank tiles ``tile_ids`` (...) at texel coordinates ``xy`` (..., 2), mirror-tiled."""
    flat, period = _mirrored_bank(), 2 * TILE
    mask = period - 1
    x, y = xy[..., 0], xy[..., 1]
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
    x0, y0 = x0.astype(np.int32), y0.astype(np.int32)
    base = np.asarray(tile_ids, np.int32) * (period * period)
    c0, c1 = x0 & mask, (x0 + 1) & mask
    r0, r1 = base + (y0 & mask) * period, base + ((y0 + 1) & mask) * period
    top = flat[r0 + c0] * (1 - fx) + flat[r0 + c1] * fx
    bottom = flat[r1 + c0] * (1 - fx) + flat[r1 + c1] * fx
    return top * (1 - fy) + bottom * fy
