"""Feature taps the paper protocols read beyond :mod:`motionrep.eval.features`.

* :class:`MultiLevelFeatures`: patch-token maps of several encoder blocks (UperNet / DPT inputs; taps 3/6/9/12).
* :class:`BackwardFeatures`: Midway's single-image top-down backward features ``v^l`` (encoder + student backward
  blocks, ``docs/methods/midway.md``): ``v^top = z^top``, ``v^l = backward_l(z^l, v^{l+1})``.
* :func:`cls_attention`: the last block's CLS-to-patch attention, recomputed from that block's ``qkv`` weights on
  its input (the model's own forward uses fused SDPA and never materialises attention weights).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from motionrep.models.dynamics import MidwayDynamics, cls_and_patches


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Patch tokens ``(B, h*w, C)`` (row-major) → ``(B, C, h, w)``."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


def default_levels(depth: int) -> list[int]:
    """Four evenly spaced taps ending at the last block: 3/6/9/12 for depth 12, 1/2/3/4 for depth 4."""
    if depth < 4:
        raise ValueError(f"multi-level features need an encoder of depth >= 4, got {depth}")
    return [round(depth * k / 4) for k in range(1, 5)]


class MultiLevelFeatures(nn.Module):
    """Images ``(B, 3, H, W)`` in [0, 1] → one ``(B, D, h, w)`` patch map per tapped block (1-indexed)."""

    def __init__(self, encoder: nn.Module, taps: Sequence[int] | None = None):
        super().__init__()
        self.encoder = encoder
        self.taps = list(taps) if taps is not None else default_levels(encoder.depth)
        self.stride = int(encoder.patch_size)
        self.dims = [int(encoder.embed_dim)] * len(self.taps)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        grid = self.encoder.grid_size(tuple(images.shape[-2:]))
        return [tokens_to_map(self.encoder.patch_tokens(z), grid) for z in self.encoder(images, taps=self.taps)]


class BackwardFeatures(nn.Module):
    """Midway backward features of one image at ``levels`` (default: all objective levels, ascending), each
    ``(B, D, h, w)``; ``levels=[lowest]`` is the paper's linear-readout input ``v^3``."""

    def __init__(self, encoder: nn.Module, dynamics: MidwayDynamics, levels: Sequence[int] | None = None):
        super().__init__()
        if not dynamics.config.backward:
            raise ValueError("this Midway model has no backward layers (midway.backward: false)")
        self.encoder, self.dynamics = encoder, dynamics
        objective = dynamics.config.objective_levels
        self.levels = list(levels) if levels is not None else objective
        unknown = sorted(set(self.levels) - set(objective))
        if unknown:
            raise ValueError(f"backward features exist at the objective levels {objective}, not at {unknown}")
        self.stride = int(encoder.patch_size)
        self.dims = [int(encoder.embed_dim)] * len(self.levels)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        cfg = self.dynamics.config
        grid = self.encoder.grid_size(tuple(images.shape[-2:]))
        z = [cls_and_patches(t, self.encoder.num_prefix_tokens) for t in self.encoder(images, taps=cfg.levels)]
        if not cfg.use_cls_token:
            z = [t[:, 1:] for t in z]
        drop = int(cfg.use_cls_token)
        v, out = z[-1], {}
        for i in reversed(range(len(cfg.objective_levels))):
            v = self.dynamics.refine(i, z[i], v)
            out[cfg.levels[i]] = tokens_to_map(v[:, drop:], grid)
        return [out[level] for level in self.levels]


@torch.no_grad()
def cls_attention(encoder: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Attention of the CLS token to every patch in the last block, per head: ``(B, heads, h, w)`` (each head's
    row sums to 1 over all tokens, so patch maps sum to at most 1)."""
    grid = encoder.grid_size(tuple(images.shape[-2:]))
    x = encoder.embed(images)
    for block in encoder.blocks[:-1]:
        x = block(x)
    last = encoder.blocks[-1]
    b, n, c = x.shape
    heads = last.attn.heads
    q, k, _ = last.attn.qkv(last.norm1(x)).view(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    logits = (q[:, :, :1] @ k.transpose(-2, -1)) * (c // heads) ** -0.5  # (B, heads, 1, n)
    weights = logits.softmax(-1)[:, :, 0, encoder.num_prefix_tokens :]
    return weights.reshape(b, heads, *grid)
