"""Vision Transformer with multi-level taps, in one file.

A DINO / DINOv2-style pre-LN ViT: ``patch_embed.proj`` convolution, CLS token, optional register tokens (DINOv2
layout ``[CLS, registers, patches]``; registers carry no position embedding), learned absolute position embedding
resampled bicubically to any input grid, :class:`~motionrep.models.blocks.Block` stack with linear drop-path and
optional LayerScale, and a final ``norm``. Parameter names equal those of the official DINO and DINOv2 releases, so
their checkpoints load after at most a prefix strip (``docs/models.md``).

Images enter as float ``(B, 3, H, W)`` in ``[0, 1]``; the model applies ImageNet mean/std itself
(``normalize=False`` skips it for inputs that are already normalised).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from motionrep.models.blocks import Block, init_weights

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

VIT_PRESETS: dict[str, dict] = {
    "vit-micro": dict(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=2),
    "vit-synth-tiny": dict(img_size=64, patch_size=8, embed_dim=128, depth=6, num_heads=4),
    "vit-synth-small": dict(img_size=64, patch_size=8, embed_dim=192, depth=12, num_heads=3),
    "vit-tiny": dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "vit-s16": dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "vit-b16": dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit-s14": dict(
        img_size=518, patch_size=14, embed_dim=384, depth=12, num_heads=6, layer_scale=1e-5, mask_token=True
    ),
    "vit-b14": dict(
        img_size=518, patch_size=14, embed_dim=768, depth=12, num_heads=12, layer_scale=1e-5, mask_token=True
    ),
}


def resample_pos_embed(
    pos_embed: Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int], antialias: bool = False
) -> Tensor:
    """Bicubically resample the grid rows of a ``(1, 1 + h*w, D)`` position embedding; the CLS row is kept as is.

    Uses ``F.interpolate(size=dst_grid, mode="bicubic", align_corners=False, antialias=antialias)``; the model
    resamples without antialiasing, timm resamples checkpoints with it. At ``dst_grid == src_grid`` the input is
    returned unchanged.
    """
    if tuple(dst_grid) == tuple(src_grid):
        return pos_embed
    (sh, sw), d = src_grid, pos_embed.shape[-1]
    if pos_embed.shape[1] != 1 + sh * sw:
        raise ValueError(f"position embedding has {pos_embed.shape[1]} rows, expected 1 + {sh}*{sw}")
    cls_row, grid = pos_embed[:, :1], pos_embed[:, 1:]
    grid = grid.reshape(1, sh, sw, d).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=tuple(dst_grid), mode="bicubic", align_corners=False, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, d).to(pos_embed.dtype)
    return torch.cat([cls_row, grid], dim=1)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch x patch`` convolution: ``(B, 3, H, W) -> (B, h*w, D)`` in row-major token order."""

    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """Pre-LN ViT returning the final-LayerNorm-ed tokens of the requested blocks.

    ``img_size`` only fixes the native grid of the stored position embedding; any input whose sides are multiples
    of ``patch_size`` is accepted. ``layer_scale`` (e.g. ``1e-5``) adds DINOv2's ``ls1`` / ``ls2``;
    ``num_register_tokens`` adds ``register_tokens``; ``mask_token=True`` adds DINOv2's ``mask_token`` used by the
    ``mask`` argument of :meth:`forward`. ``drop_path_rate`` grows linearly from 0 (first block) to the rate (last).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.0,
        layer_scale: float | None = None,
        num_register_tokens: int = 0,
        mask_token: bool = False,
        normalize: bool = True,
        eps: float = 1e-6,
    ):
        super().__init__()
        img_hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if patch_size < 1 or depth < 1 or num_register_tokens < 0 or not 0.0 <= drop_path_rate < 1.0:
            raise ValueError("need patch_size >= 1, depth >= 1, num_register_tokens >= 0 and 0 <= drop_path_rate < 1")
        if img_hw[0] % patch_size or img_hw[1] % patch_size:
            raise ValueError(f"img_size {img_hw} is not a multiple of patch_size {patch_size}")
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.num_register_tokens = num_register_tokens
        self.num_prefix_tokens = 1 + num_register_tokens
        self.normalize = normalize
        self.pos_grid = (img_hw[0] // patch_size, img_hw[1] // patch_size)

        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.pos_grid[0] * self.pos_grid[1], embed_dim))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim)) if num_register_tokens else None
        )
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim)) if mask_token else None
        rates = torch.linspace(0.0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_path=r, layer_scale=layer_scale, eps=eps)
            for r in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=eps)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._init_parameters()

    def _init_parameters(self) -> None:
        self.apply(init_weights)
        for p in (self.pos_embed, self.cls_token, self.register_tokens):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        if self.mask_token is not None:
            nn.init.zeros_(self.mask_token)

    def grid_size(self, hw: tuple[int, int]) -> tuple[int, int]:
        """Token grid ``(h, w)`` of an ``hw = (H, W)`` input; both sides must be multiples of the patch size."""
        h, w = hw
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {self.patch_size}")
        return h // self.patch_size, w // self.patch_size

    def patch_tokens(self, tokens: Tensor) -> Tensor:
        """Drop the prefix (CLS and register) tokens: ``(B, prefix + n, D) -> (B, n, D)``."""
        return tokens[:, self.num_prefix_tokens :]

    def pos_embed_for(self, grid: tuple[int, int]) -> Tensor:
        """The position embedding ``(1, 1 + h*w, D)`` for a token grid, resampled from the native grid if needed."""
        return resample_pos_embed(self.pos_embed, self.pos_grid, grid)

    def embed(self, x: Tensor, keep: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        """Image ``(B, 3, H, W)`` to the block input ``(B, prefix + n, D)`` (see :meth:`forward`)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
        b = x.shape[0]
        grid = self.grid_size((x.shape[2], x.shape[3]))
        if self.normalize:
            x = (x - self.mean) / self.std
        tokens = self.patch_embed(x)
        if mask is not None:
            if self.mask_token is None:
                raise ValueError("mask given but the model has no mask_token (build it with mask_token=True)")
            if mask.shape != tokens.shape[:2] or mask.dtype != torch.bool:
                raise ValueError(f"mask must be a bool tensor of shape {tuple(tokens.shape[:2])}")
            tokens = torch.where(mask.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1) + self.pos_embed_for(grid)
        if keep is not None:
            if keep.dim() != 2 or keep.shape[0] != b or keep.dtype != torch.long:
                raise ValueError(
                    f"keep must be a long tensor of shape (B={b}, K), got {keep.dtype} {tuple(keep.shape)}"
                )
            patches = tokens[:, 1:].gather(1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
            tokens = torch.cat([tokens[:, :1], patches], dim=1)
        if self.register_tokens is not None:
            tokens = torch.cat([tokens[:, :1], self.register_tokens.expand(b, -1, -1), tokens[:, 1:]], dim=1)
        return tokens

    def forward(
        self,
        x: Tensor,
        taps: Sequence[int] | None = None,
        keep: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> Tensor | list[Tensor]:
        """Tokens ``(B, prefix + n, D)`` after the final LayerNorm: of the last block, or of each tapped block.

        ``taps``: 1-indexed block numbers; a list with one normed tensor per tap is returned, and blocks after the
        last tap are not run. ``keep``: ``(B, K)`` long indices of patch tokens kept after the position embedding
        (MAE-style; prefix tokens are always kept), outputs then have ``prefix + K`` tokens. ``mask``: ``(B, n)``
        bool, patch embeddings replaced by ``mask_token`` before the position embedding (iBOT / DINOv2 style).
        """
        if taps is not None:
            taps = [int(t) for t in taps]
            if not taps or min(taps) < 1 or max(taps) > self.depth:
                raise ValueError(f"taps must be non-empty block numbers in 1..{self.depth}, got {taps}")
        tokens = self.embed(x, keep, mask)
        last = self.depth if taps is None else max(taps)
        outputs: dict[int, Tensor] = {}
        for i, block in enumerate(self.blocks[:last], start=1):
            tokens = block(tokens)
            if taps is not None and i in taps:
                outputs[i] = self.norm(tokens)
        if taps is None:
            return self.norm(tokens)
        return [outputs[t] for t in taps]


def build_vit(name: str, **overrides) -> VisionTransformer:
    """A :data:`VIT_PRESETS` entry with keyword overrides, e.g. ``drop_path_rate=0.1``, ``num_register_tokens=4``."""
    if name not in VIT_PRESETS:
        raise ValueError(f"unknown ViT preset {name!r}; choose one of: {', '.join(VIT_PRESETS)}")
    valid = set(inspect.signature(VisionTransformer.__init__).parameters) - {"self"}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown ViT option(s) {unknown}; valid options: {', '.join(sorted(valid))}")
    return VisionTransformer(**{**VIT_PRESETS[name], **overrides})
