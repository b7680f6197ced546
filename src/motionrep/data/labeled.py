"""Labelled evaluation data: in-memory containers and loaders for the real datasets in their on-disk layouts.

Containers (what every evaluation protocol consumes):

* :class:`SegSet` — images uint8 ``(N, 3, H, W)`` and labels int64 ``(N, H, W)`` (``ignore_index`` skipped);
* :class:`FlowSet` — frame pairs uint8 ``(N, 3, H, W)`` twice, flow float32 ``(N, 2, H, W)`` as (dx, dy) from the
  first frame to the second, validity bool ``(N, H, W)``;
* :class:`VideoSet` — clips, each frames uint8 ``(T, 3, H, W)`` with object masks int64 ``(T, H, W)`` (0 =
  background) and optionally point tracks ``(T, N, 2)`` (x, y) with visibility ``(T, N)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SegSet:
    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    ignore_index: int = 255

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: torch.Tensor | slice) -> SegSet:
        return SegSet(self.images[idx], self.labels[idx], self.class_names, self.ignore_index)


@dataclass
class FlowSet:
    image1: torch.Tensor
    image2: torch.Tensor
    flow: torch.Tensor
    valid: torch.Tensor

    def __len__(self) -> int:
        return len(self.image1)

    def subset(self, idx: torch.Tensor | slice) -> FlowSet:
        return FlowSet(self.image1[idx], self.image2[idx], self.flow[idx], self.valid[idx])


@dataclass
class Clip:
    frames: torch.Tensor
    masks: torch.Tensor
    tracks: torch.Tensor | None = None
    visible: torch.Tensor | None = None
    name: str = ""


@dataclass
class VideoSet:
    clips: list[Clip] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.clips)
