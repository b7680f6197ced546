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


@dataclass
class EvalData:
    """Everything the protocols read; parts a dataset does not provide are ``None`` (their protocols are skipped)."""

    name: str
    seg_train: SegSet | None = None
    seg_val: SegSet | None = None
    flow_train: FlowSet | None = None
    flow_val: FlowSet | None = None
    videos: VideoSet | None = None

    def supports(self, protocol: str) -> bool:
        needs = {
            "seg_linear": (self.seg_train, self.seg_val),
            "overcluster": (self.seg_val,),
            "incontext": (self.seg_train, self.seg_val),
            "propagation": (self.videos,),
            "flow_probe": (self.flow_train, self.flow_val),
            "flow_match": (self.flow_val,),
            "tracking": (self.videos,),
            "dis": (self.flow_val,),
        }[protocol]
        if protocol == "tracking" and self.videos is not None:
            return any(c.tracks is not None for c in self.videos.clips)
        return all(x is not None and len(x) > 0 for x in needs)
