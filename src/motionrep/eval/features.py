"""Dense features of frozen backbones for the evaluation protocols.

A feature extractor maps images float ``(B, 3, H, W)`` in ``[0, 1]`` to a dense map ``(B, C, h, w)`` whose cells
are ``stride`` pixels apart (cell ``(i, j)`` covers pixels ``[stride*j, stride*(j+1))`` horizontally). Adapters:
:class:`ViTFeatures` (patch tokens of a ViT at a chosen block, prefix tokens stripped), :class:`PixelFeatures`
(mean pixel colour per patch: the recognition baseline) and :func:`random_init` (the same architecture, untrained).
:func:`extract` runs an extractor over a dataset in batches without gradients, optionally sharded over ranks and
gathered with :func:`motionrep.train.dist.all_gather_cat`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import nullcontext
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from motionrep.train import dist


@runtime_checkable
class FeatureExtractor(Protocol):
    """Images ``(B, 3, H, W)`` in [0, 1] → dense features ``(B, C, H / stride, W / stride)``."""

    stride: int
    dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


class ViTFeatures(nn.Module):
    """Patch tokens of a ViT encoder at block ``tap`` (1-indexed; ``None`` = last), as a ``(B, D, h, w)`` map.

    The encoder must follow :class:`motionrep.models.vit.VisionTransformer`: ``forward(x, taps)``,
    ``num_prefix_tokens``, ``patch_size``, ``embed_dim`` and ``grid_size(hw)``.
    """

    def __init__(self, encoder: nn.Module, tap: int | None = None):
        super().__init__()
        self.encoder = encoder
        self.tap = tap
        self.stride = int(encoder.patch_size)
        self.dim = int(encoder.embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = self.encoder.grid_size(tuple(images.shape[-2:]))
        tokens = self.encoder(images) if self.tap is None else self.encoder(images, taps=[self.tap])[0]
        patches = tokens[:, self.encoder.num_prefix_tokens :]
        return patches.transpose(1, 2).reshape(images.shape[0], -1, h, w)


class MidwayBackwardFeatures(nn.Module):
    """Midway's single-image readout (as PooDLe reads its decoder): the top-down backward features of one frame.

    Encoder tokens at the dynamics' levels are refined top-down — the top level is the first context, each lower
    objective level's backward stack attends to the result of the level above — and the lowest objective level's
    backward features are returned as a ``(B, D, h, w)`` map. The EMA teacher's backward stacks are used when the
    model has them (the official checkpoint keeps one per level for this readout), else the student's.
    """

    def __init__(self, encoder: nn.Module, dynamics: nn.Module):
        super().__init__()
        if not dynamics.config.backward:
            raise ValueError("the Midway dynamics have no backward layers (midway.backward=false)")
        self.encoder, self.dynamics = encoder, dynamics
        self.stacks = dynamics.teacher_backward if dynamics.uses_teacher_backward else dynamics.student_backward
        self.stride, self.dim = int(encoder.patch_size), int(encoder.embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = self.encoder.grid_size(tuple(images.shape[-2:]))
        prefix, cls = self.encoder.num_prefix_tokens, int(self.dynamics.config.use_cls_token)
        taps = self.encoder(images, taps=list(self.dynamics.config.levels))
        taps = [torch.cat([t[:, :cls], t[:, prefix:]], dim=1) for t in taps]  # [CLS +] patches
        context = taps[-1]
        for i in reversed(range(len(taps) - 1)):
            context = self.stacks[i](taps[i], context)
        return context[:, cls:].transpose(1, 2).reshape(images.shape[0], -1, h, w)


class PixelFeatures(nn.Module):
    """Raw-pixel baseline: the mean colour of each ``stride x stride`` patch, ``(B, 3, h, w)``."""

    dim = 3

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(images, self.stride)


class CachedFeatures(nn.Module):
    """Wraps an extractor so that :func:`extract` computes the features of a given image tensor only once.

    Entries are keyed by the identity of the input tensor (kept alive by the cache), so the protocols of one
    model share the features of the same data; use one wrapper per model and drop it afterwards.
    """

    def __init__(self, extractor: FeatureExtractor):
        super().__init__()
        self.extractor = extractor
        self.stride, self.dim = extractor.stride, extractor.dim
        self.entries: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor(images)


def random_init(encoder: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of ``encoder`` with freshly initialised weights (same architecture, same init scheme, seeded)."""
    fresh = copy.deepcopy(encoder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if hasattr(fresh, "_init_parameters"):
            fresh._init_parameters()
        else:
            for m in fresh.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
    return fresh


def to_float_images(x: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` → float in [0, 1]; float input is returned as float32."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def autocast_for(device: torch.device):
    """Mixed precision on CUDA only; a no-op context elsewhere."""
    return torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else nullcontext()


def module_device(module: object) -> torch.device:
    """The device of a module's first parameter or buffer (CPU for parameter-free callables)."""
    if isinstance(module, nn.Module):
        for t in [*module.parameters(), *module.buffers()]:
            return t.device
    return torch.device("cpu")


@torch.no_grad()
def extract(
    extractor: Callable[..., torch.Tensor],
    *images: torch.Tensor,
    batch_size: int = 64,
    distributed: bool = True,
    desc: str = "features",
) -> torch.Tensor:
    """Dense features ``(N, C, h, w)`` (float32, CPU) of ``images (N, 3, H, W)`` (uint8 or float in [0, 1]).

    Several image tensors (e.g. the two frames of flow pairs) are passed to the extractor together, batch by
    batch. With ``distributed`` and several ranks, each rank computes its contiguous shard and the shards are
    gathered in rank order, so every rank returns the features of all ``N`` images.
    """
    if isinstance(extractor, CachedFeatures) and len(images) == 1:
        key = (id(images[0]), tuple(images[0].shape), distributed)
        if key not in extractor.entries:
            feats = extract(extractor.extractor, *images, batch_size=batch_size, distributed=distributed, desc=desc)
            extractor.entries[key] = (images[0], feats)
        return extractor.entries[key][1]
    n = len(images[0])
    for x in images:
        if x.dim() != 4 or x.shape[1] != 3 or len(x) != n:
            raise ValueError(f"expected image tensors (N={n}, 3, H, W), got {tuple(x.shape)}")
    device = module_device(extractor)
    part = dist.shard(n) if distributed else slice(0, n)
    was_training = getattr(extractor, "training", False)
    if isinstance(extractor, nn.Module):
        extractor.eval()
    chunks = []
    starts = range(part.start, part.stop, batch_size)
    for s in tqdm(starts, desc=desc, leave=False, disable=not dist.is_main() or None):
        e = min(s + batch_size, part.stop)
        batch = [to_float_images(x[s:e].to(device, non_blocking=True)) for x in images]
        with autocast_for(device):
            chunks.append(extractor(*batch).float().cpu())
    if isinstance(extractor, nn.Module):
        extractor.train(was_training)
    if not chunks:  # an empty shard: run one image to learn the output shape
        with autocast_for(device):
            probe = extractor(*[to_float_images(x[:1].to(device)) for x in images]).float().cpu()
        chunks.append(probe[:0])
    out = torch.cat(chunks)
    return dist.all_gather_cat(out) if distributed else out


def figure_indices(n: int, k: int = 4) -> torch.Tensor:
    """``k`` indices spread evenly over ``range(n)`` (sorted, unique): the items whose predictions figures show."""
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.linspace(0, n - 1, min(k, n)).round().long().unique()
