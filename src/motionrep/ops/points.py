"""The one place for coordinate conventions.

Points are ``(x, y)`` in pixel units of the frame they belong to, with pixel centres at integer coordinates:
the pixel in column ``j`` and row ``i`` covers ``[j - 0.5, j + 0.5) x [i - 0.5, i + 0.5)``. A frame of width ``W``
spans ``[-0.5, W - 0.5)``. Every conversion — to ``grid_sample`` coordinates, to token indices, under a crop,
resize or flip — is defined here and nowhere else.

A view of a frame (crop, resize, flip, or any composition) is an axis-aligned affine map of pixel coordinates,
``x' = sx * x + tx``, ``y' = sy * y + ty`` (``sx < 0`` for a horizontal flip): :class:`ViewTransform`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ViewTransform:
    """Axis-aligned affine map from a source frame's pixel coordinates to a view's pixel coordinates."""

    sx: float = 1.0
    tx: float = 0.0
    sy: float = 1.0
    ty: float = 0.0

    @staticmethod
    def resize(src_wh: tuple[float, float], dst_wh: tuple[float, float]) -> ViewTransform:
        """Resize a ``src_wh`` frame to ``dst_wh``: ``x' = (x + 0.5) * W1 / W0 - 0.5``."""
        sx, sy = dst_wh[0] / src_wh[0], dst_wh[1] / src_wh[1]
        return ViewTransform(sx, 0.5 * sx - 0.5, sy, 0.5 * sy - 0.5)

    @staticmethod
    def crop(box: tuple[float, float, float, float], out_wh: tuple[float, float] | None = None) -> ViewTransform:
        """Crop ``box = (x0, y0, w, h)`` (pixel-edge units: the box covers ``[x0, x0 + w)``) resized to ``out_wh``.

        ``x' = (x - x0 + 0.5) * Wc / w - 0.5``; without ``out_wh`` the crop keeps its size.
        """
        x0, y0, w, h = box
        wc, hc = out_wh if out_wh is not None else (w, h)
        sx, sy = wc / w, hc / h
        return ViewTransform(sx, (0.5 - x0) * sx - 0.5, sy, (0.5 - y0) * sy - 0.5)

    @staticmethod
    def hflip(width: float) -> ViewTransform:
        """Horizontal flip of a frame of width ``width``: ``x' = W - 1 - x``."""
        return ViewTransform(-1.0, width - 1.0, 1.0, 0.0)

    def then(self, other: ViewTransform) -> ViewTransform:
        """The composition ``other ∘ self`` (apply ``self`` first)."""
        return ViewTransform(
            other.sx * self.sx, other.sx * self.tx + other.tx, other.sy * self.sy, other.sy * self.ty + other.ty
        )

    def inverse(self) -> ViewTransform:
        return ViewTransform(1.0 / self.sx, -self.tx / self.sx, 1.0 / self.sy, -self.ty / self.sy)

    @property
    def flips(self) -> bool:
        return self.sx < 0

    def apply(self, xy: torch.Tensor) -> torch.Tensor:
        """Map points ``(..., 2)`` in (x, y) order."""
        scale = xy.new_tensor([self.sx, self.sy])
        shift = xy.new_tensor([self.tx, self.ty])
        return xy * scale + shift

    def apply_vectors(self, uv: torch.Tensor, channel_dim: int = -1) -> torch.Tensor:
        """Map displacement vectors (e.g. flow ``(dx, dy)``): only the linear part acts."""
        shape = [1] * uv.dim()
        shape[channel_dim] = 2
        return uv * uv.new_tensor([self.sx, self.sy]).view(shape)

    def sampling_grid(self, out_hw: tuple[int, int], src_hw: tuple[int, int], device=None) -> torch.Tensor:
        """``grid_sample`` grid (1, H', W', 2) that renders this view of a ``src_hw`` frame at ``out_hw``.

        Use with ``align_corners=False``: each output pixel centre is mapped back through the inverse transform.
        """
        inv = self.inverse()
        ys = torch.arange(out_hw[0], dtype=torch.float32, device=device)
        xs = torch.arange(out_hw[1], dtype=torch.float32, device=device)
        src = torch.stack(torch.meshgrid(xs * inv.sx + inv.tx, ys * inv.sy + inv.ty, indexing="xy"), dim=-1)
        return pixel_to_grid(src, (src_hw[1], src_hw[0]))[None]


def pixel_to_grid(xy: torch.Tensor, wh: tuple[float, float]) -> torch.Tensor:
    """Pixel (x, y) → ``grid_sample`` coordinates in [-1, 1] for ``align_corners=False``: ``u = (2x + 1)/W - 1``."""
    size = xy.new_tensor(wh)
    return (2.0 * xy + 1.0) / size - 1.0


def grid_to_pixel(uv: torch.Tensor, wh: tuple[float, float]) -> torch.Tensor:
    """Inverse of :func:`pixel_to_grid`."""
    size = uv.new_tensor(wh)
    return ((uv + 1.0) * size - 1.0) / 2.0


def inside(xy: torch.Tensor | np.ndarray, wh: tuple[float, float]) -> torch.Tensor | np.ndarray:
    """Bool mask of points inside a ``wh`` frame, i.e. in ``[-0.5, W - 0.5) x [-0.5, H - 0.5)``.

    Works on tensors and numpy arrays alike (the result has the input's type)."""
    x, y = xy[..., 0], xy[..., 1]
    return (x >= -0.5) & (x < wh[0] - 0.5) & (y >= -0.5) & (y < wh[1] - 0.5)


def grid_points(n: int, wh: tuple[float, float], device=None) -> torch.Tensor:
    """Centres of an ``n x n`` grid of equal cells over a ``wh`` frame, row-major (x fastest): (n*n, 2).

    ``x_i = (i + 0.5) * W / n - 0.5``. With ``n`` tokens per side each point sits at a token centre.
    """
    xs = (torch.arange(n, dtype=torch.float32, device=device) + 0.5) * wh[0] / n - 0.5
    ys = (torch.arange(n, dtype=torch.float32, device=device) + 0.5) * wh[1] / n - 0.5
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)


def token_rc(xy: torch.Tensor, patch: int, grid_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of the token containing each point: ``col = clamp(floor((x + 0.5) / p), 0, s - 1)``."""
    col = torch.floor((xy[..., 0] + 0.5) / patch).long().clamp_(0, grid_hw[1] - 1)
    row = torch.floor((xy[..., 1] + 0.5) / patch).long().clamp_(0, grid_hw[0] - 1)
    return row, col


def token_index(xy: torch.Tensor, patch: int, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Flat (row-major) index of the token containing each point: ``row * s_w + col``."""
    row, col = token_rc(xy, patch, grid_hw)
    return row * grid_hw[1] + col


def sample_tokens(
    tokens: torch.Tensor, xy: torch.Tensor, patch: int, grid_hw: tuple[int, int], mode: str = "token"
) -> torch.Tensor:
    """Features of patch tokens ``(B, h*w, C)`` at points ``(B, N, 2)`` → ``(B, N, C)``.

    ``mode="token"`` takes the token that contains the point (≡ nearest upsampling then indexing; no upsampled
    tensor). ``mode="bilinear"`` interpolates between token centres (token centre ``j`` sits at pixel
    ``p * j + (p - 1) / 2``), with border padding.
    """
    if mode == "token":
        idx = token_index(xy, patch, grid_hw)
        return torch.gather(tokens, 1, idx[..., None].expand(-1, -1, tokens.shape[-1]))
    if mode == "bilinear":
        b, _, c = tokens.shape
        fmap = tokens.transpose(1, 2).reshape(b, c, *grid_hw)
        grid = pixel_to_grid(xy, (grid_hw[1] * patch, grid_hw[0] * patch))[:, :, None]
        out = F.grid_sample(fmap, grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out[..., 0].transpose(1, 2)
    raise ValueError(f"unknown sampling mode {mode!r}; expected 'token' or 'bilinear'")
