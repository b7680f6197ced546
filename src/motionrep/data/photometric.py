"""DINO's photometric augmentations with kornia, drawn independently for every image of a batch.

Images are float ``(N, 3, H, W)`` in [0, 1]; ImageNet normalisation belongs to the model, not here.

- transform 1 (first global crop, Midway's source motion crop): colour jitter, grayscale, Gaussian blur p 1.0;
- transform 2 (second global crop, target motion crop): colour jitter, grayscale, blur p 0.1, solarize p 0.2;
- local crops: colour jitter, grayscale, blur p 0.5.

Colour jitter is torchvision's (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, random order) with p 0.8;
grayscale p 0.2; blur sigma uniform in [0.1, 2] pixels (PIL's radius in DINO); solarize inverts values >= 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import torch
from torch import nn


@dataclass(frozen=True)
class PhotometricConfig:
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int = 13


class Photometric(nn.Module):
    """Jitter → grayscale → blur (p ``blur_p``) → solarize (p ``solarize_p``), parameters independent per image."""

    def __init__(self, cfg: PhotometricConfig, blur_p: float, solarize_p: float = 0.0) -> None:
        super().__init__()
        ops: list[nn.Module] = [
            K.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue, p=cfg.jitter_p),
            K.RandomGrayscale(p=cfg.grayscale_p),
        ]
        if blur_p > 0:
            ops.append(K.RandomGaussianBlur(cfg.blur_kernel, cfg.blur_sigma, border_type="reflect", p=blur_p))
        if solarize_p > 0:
            ops.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p))  # threshold exactly 0.5
        self.ops = nn.Sequential(*ops)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[0] == 0:
            return images
        return self.ops(images).clamp_(0.0, 1.0)


def global_transform_1(cfg: PhotometricConfig = PhotometricConfig()) -> Photometric:
    return Photometric(cfg, blur_p=1.0)


def global_transform_2(cfg: PhotometricConfig = PhotometricConfig()) -> Photometric:
    return Photometric(cfg, blur_p=0.1, solarize_p=0.2)


def local_transform(cfg: PhotometricConfig = PhotometricConfig()) -> Photometric:
    return Photometric(cfg, blur_p=0.5)
