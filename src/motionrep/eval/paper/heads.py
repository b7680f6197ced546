"""Dense heads of the paper protocols, native PyTorch (no mmsegmentation):

* :class:`LinearHead` — DeepLab-v1-style "linear" readout: per-position LayerNorm and one 1x1 convolution on the
  (channel-concatenated) feature maps.
* :class:`UperNetHead` — UperNet on four same-resolution ViT maps: a multi-level neck turns them into a stride
  pyramid (x4 and x2 transposed convolutions, identity, 2x max-pool; mmseg's ViT recipe), then a pyramid pooling
  module on the coarsest level, an FPN top-down path and a fused 3x3 bottleneck.
* :class:`DPTHead` — DPT on four token maps of any widths: each projected to a common width and resampled to
  strides x4, x2, x1, x0.5 of the token grid, fused coarse-to-fine by residual units, output at full resolution.

Normalisation is GroupNorm (batch-independent), so training under N ranks equals one rank with the global batch
(SyncBatchNorm would need CUDA); this is the project's stand-in for mmseg's SyncBN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from motionrep.eval.flow import ResidualConvUnit


def _norm(width: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (fewer for narrow layers: at least 8 channels per group, so 1x1 maps normalise)."""
    return nn.GroupNorm(max(1, min(32, width // 8)), width)


def conv_norm_act(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), _norm(cout), nn.ReLU(inplace=True))


def _resize(x: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
    return x if tuple(x.shape[-2:]) == tuple(hw) else F.interpolate(x, size=tuple(hw), mode="bilinear")


class LinearHead(nn.Module):
    """``1x1 conv(LayerNorm(concat(maps)))`` → logits at the feature resolution."""

    def __init__(self, in_dims: Sequence[int], num_classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(sum(in_dims))
        self.cls = nn.Conv2d(sum(in_dims), num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        x = torch.cat([_resize(f, feats[0].shape[-2:]) for f in feats], dim=1)
        return self.cls(self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


class MultiLevelNeck(nn.Module):
    """Four ``(B, D_i, h, w)`` maps → strides x4, x2, x1, x0.5 of the token grid (learned up-sampling)."""

    def __init__(self, in_dims: Sequence[int]):
        super().__init__()
        if len(in_dims) != 4:
            raise ValueError(f"the multi-level neck takes 4 feature maps, got {len(in_dims)}")
        d0, d1 = in_dims[0], in_dims[1]
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(d0, d0, 2, 2), _norm(d0), nn.GELU(), nn.ConvTranspose2d(d0, d0, 2, 2)
        )
        self.up2 = nn.ConvTranspose2d(d1, d1, 2, 2)
        self.down2 = nn.MaxPool2d(2, ceil_mode=True)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [self.up4(feats[0]), self.up2(feats[1]), feats[2], self.down2(feats[3])]


class UperNetHead(nn.Module):
    """UperNet (PPM + FPN) on four ViT maps → logits at 4x the token-grid resolution."""

    def __init__(self, in_dims: Sequence[int], num_classes: int, width: int = 512, pool_scales=(1, 2, 3, 6)):
        super().__init__()
        self.neck = MultiLevelNeck(in_dims)
        self.pool_scales = tuple(pool_scales)
        self.ppm = nn.ModuleList(conv_norm_act(in_dims[3], width, 1) for _ in self.pool_scales)
        self.ppm_out = conv_norm_act(in_dims[3] + len(self.pool_scales) * width, width)
        self.lateral = nn.ModuleList(conv_norm_act(d, width, 1) for d in in_dims[:3])
        self.fpn = nn.ModuleList(conv_norm_act(width, width) for _ in range(3))
        self.bottleneck = conv_norm_act(4 * width, width)
        self.cls = nn.Conv2d(width, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        pyramid = self.neck(feats)
        top = pyramid[3]
        pooled = [_resize(conv(F.adaptive_avg_pool2d(top, s)), top.shape[-2:]) for s, conv in zip(
            self.pool_scales, self.ppm, strict=True)]  # fmt: skip
        laterals = [conv(x) for conv, x in zip(self.lateral, pyramid[:3], strict=True)]
        laterals.append(self.ppm_out(torch.cat([top, *pooled], dim=1)))
        for i in range(3, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn, laterals[:3], strict=True)] + [laterals[3]]
        size = outs[0].shape[-2:]
        return self.cls(self.bottleneck(torch.cat([_resize(o, size) for o in outs], dim=1)))


class FusionBlock(nn.Module):
    """DPT feature fusion: ``unit2(x + unit1(skip))`` (skip optional), 2x bilinear up-sampling, 1x1 output conv."""

    def __init__(self, width: int):
        super().__init__()
        self.unit1, self.unit2 = ResidualConvUnit(width), ResidualConvUnit(width)
        self.out = nn.Conv2d(width, width, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = _resize(x, skip.shape[-2:]) + self.unit1(skip)
        x = F.interpolate(self.unit2(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.out(x)


class DPTHead(nn.Module):
    """DPT decoder: four token maps ``(B, D_i, h, w)`` (finest-to-coarsest role order) → ``(B, out, H, W)``."""

    def __init__(self, in_dims: Sequence[int], out_channels: int, width: int = 256):
        super().__init__()
        if len(in_dims) != 4:
            raise ValueError(f"the DPT head takes 4 token maps, got {len(in_dims)}")
        self.project = nn.ModuleList(nn.Conv2d(d, width, 1) for d in in_dims)
        self.resample = nn.ModuleList(
            [
                nn.ConvTranspose2d(width, width, 4, 4),
                nn.ConvTranspose2d(width, width, 2, 2),
                nn.Identity(),
                nn.Conv2d(width, width, 3, stride=2, padding=1),
            ]
        )
        self.smooth = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1, bias=False) for _ in in_dims)
        self.fusion = nn.ModuleList(FusionBlock(width) for _ in in_dims)
        self.out = nn.Sequential(
            nn.Conv2d(width, width // 2, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width // 2, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, out_channels, 1),
        )

    def forward(self, maps: Sequence[torch.Tensor], out_hw: Sequence[int]) -> torch.Tensor:
        levels = [
            smooth(resample(project(m)))
            for m, project, resample, smooth in zip(maps, self.project, self.resample, self.smooth, strict=True)
        ]
        x = self.fusion[3](levels[3])
        for i in (2, 1, 0):
            x = self.fusion[i](x, levels[i])
        return self.out(_resize(x, out_hw))
