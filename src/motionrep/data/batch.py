"""Typed training batches. Images are float32 in [0, 1]; a view's geometry is its
:class:`~motionrep.ops.points.ViewTransform` stored as ``[sx, tx, sy, ty]`` (``views.transform_from_tensor`` reads
one back): ``x_view = sx * x_frame + tx``, ``y_view = sy * y_frame + ty`` in the source frame's pixels.

``skipped`` lists the videos that were unreadable while this batch was produced (each replaced by another video);
the training loop adds them to its run log.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TypeVar

import torch

B = TypeVar("B", bound="_TensorBatch")


class _TensorBatch:
    """Shared behaviour: device moves, pinning and concatenation along the batch dimension."""

    skipped: tuple[str, ...]

    def _map(self: B, fn) -> B:
        values = {
            f.name: fn(getattr(self, f.name))
            if isinstance(getattr(self, f.name), torch.Tensor)
            else getattr(self, f.name)
            for f in dataclasses.fields(self)
        }
        return type(self)(**values)

    def to(self: B, device: torch.device | str, non_blocking: bool = False) -> B:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self: B) -> B:
        return self._map(lambda t: t.pin_memory())

    @classmethod
    def cat(cls: type[B], batches: list[B]) -> B:
        """Concatenate batches along dimension 0 (``skipped`` lists are joined)."""
        values = {}
        for f in dataclasses.fields(cls):
            parts = [getattr(b, f.name) for b in batches]
            values[f.name] = torch.cat(parts) if isinstance(parts[0], torch.Tensor) else sum(parts, ())
        return cls(**values)

    def __len__(self) -> int:
        return int(self.video.shape[0])


@dataclass
class PairBatch(_TensorBatch):
    """Frame pairs for Midway and DINO (``B`` pairs; frame axis: 0 = frame t, 1 = frame t + gap).

    motion (B, 2, 3, S, S): one shared box, no flip; photometric transform 1 on frame t, transform 2 on t + gap.
    globals (B, 2, 2, 3, G, G): [frame, crop]; both crops inside the initial crop (same place in both frames),
        each crop's box and flip shared by the two frames; crop 0 transform 1, crop 1 transform 2.
    locals (B, 2, n_local, 3, L, L): independent boxes inside the initial crop, flip p 0.5.
    *_tf: the views' transforms (…, 4), same leading shape as the images.
    video (B,): catalog index of the video; frames (B, 2): frame indices (t, t + gap).
    """

    motion: torch.Tensor
    globals: torch.Tensor
    locals: torch.Tensor
    motion_tf: torch.Tensor
    globals_tf: torch.Tensor
    locals_tf: torch.Tensor
    video: torch.Tensor
    frames: torch.Tensor
    skipped: tuple[str, ...] = ()


@dataclass
class ClipBatch(_TensorBatch):
    """Clips with point tracks for MoSiC.

    frames (B, T, 3, H, W): the clip after squash-resize → flip → crop (one view for the whole clip).
    tracks (B, T, N, 2): (x, y) in view pixels of the query grid (defined on the view of frame 0).
    visible (B, T, N): the tracker's visibility; in_crop (B, T, N): the point lies inside the view.
    transform (B, 4): the clip's view of the original frames; video (B,); indices (B, T) source frame indices.
    """

    frames: torch.Tensor
    tracks: torch.Tensor
    visible: torch.Tensor
    in_crop: torch.Tensor
    transform: torch.Tensor
    video: torch.Tensor
    indices: torch.Tensor
    skipped: tuple[str, ...] = ()
