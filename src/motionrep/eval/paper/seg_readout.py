"""Semantic-segmentation readouts of the papers (Midway §9.1): frozen "linear" (DeepLab-v1-style) and UperNet
readouts, and UperNet finetuning, trained on random crops for a fixed number of iterations and scored by
sliding-window inference with a confusion matrix reduced over ranks.

Training: images rescaled so the short side is ``short_side x U(scale_range)``, random ``crop x crop`` window
(padded with the ignore label), horizontal flip; AdamW (lr 3e-5, wd 0.05), linear warm-up then polynomial decay
(power 1), cross-entropy normalised by the *global* number of labelled pixels. Every step's global batch comes
from one seeded sampler, so N ranks (DDP) train exactly like one rank. Inference: short side rescaled to
``short_side``, ``crop`` windows at ``stride`` (mmseg ``slide``), logits averaged where windows overlap, resized
back to the label map.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from motionrep.data.loader import worker_context
from motionrep.eval.features import autocast_for, to_float_images
from motionrep.eval.metrics import confusion_matrix, reduce_confusion, segmentation_scores
from motionrep.eval.paper.heads import LinearHead, UperNetHead
from motionrep.eval.paper.streams import GlobalBatchSampler, global_step, resize_pair, shard_loader
from motionrep.train import dist

MODES = ("linear", "upernet", "upernet-finetune")


@dataclass
class ReadoutConfig:
    mode: str = "linear"
    steps: int = 60000
    batch_size: int = 16  # global; 16 for the frozen readouts, 4 for finetuning in the papers
    lr: float = 3e-5
    weight_decay: float = 0.05
    warmup: int = 1500
    crop: int = 512
    stride: int = 341  # sliding-window step (mmseg's default for 512 crops)
    short_side: int = 512
    scale_range: tuple[float, float] = (0.5, 2.0)
    width: int = 512  # UperNet channels
    workers: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown readout mode {self.mode!r}; choose from {', '.join(MODES)}")
        if self.steps < 1 or self.crop < 1 or self.stride < 1 or self.short_side < 1:
            raise ValueError("steps, crop, stride and short_side must be positive")


def rescale(image: torch.Tensor, label: torch.Tensor, short_side: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize so the shorter side is ``short_side`` (image bilinear, label nearest)."""
    h, w = image.shape[-2:]
    s = short_side / min(h, w)
    return resize_pair(image, label, (max(1, round(h * s)), max(1, round(w * s))), antialias=s < 1)


class TrainCrops(Dataset):
    """``(index, seed)`` → a randomly rescaled, cropped and flipped ``(image, label)`` of ``dataset``."""

    def __init__(self, dataset: Dataset, crop: int, short_side: int, scale_range: tuple[float, float]):
        self.dataset, self.crop, self.short_side, self.scale_range = dataset, crop, short_side, scale_range
        self.ignore_index = dataset.ignore_index

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item
        rng = np.random.default_rng(seed)
        image, label = self.dataset[index]
        image, label = rescale(image, label, self.short_side * rng.uniform(*self.scale_range))
        h, w = label.shape
        ph, pw = max(0, self.crop - h), max(0, self.crop - w)
        image = F.pad(image, (0, pw, 0, ph))
        label = F.pad(label, (0, pw, 0, ph), value=self.ignore_index)
        y, x = rng.integers(0, label.shape[0] - self.crop + 1), rng.integers(0, label.shape[1] - self.crop + 1)
        image, label = image[:, y : y + self.crop, x : x + self.crop], label[y : y + self.crop, x : x + self.crop]
        if rng.random() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        return image, label


class SegModel(nn.Module):
    """``features`` (images → list of maps, with ``stride`` and ``dims``) + head → logits at the input size."""

    def __init__(self, features: nn.Module, head: nn.Module, frozen: bool):
        super().__init__()
        self.features, self.head, self.frozen = features, head, frozen
        self.stride = int(features.stride)
        if frozen:
            features.requires_grad_(False)

    def train(self, mode: bool = True) -> SegModel:
        super().train(mode)
        if self.frozen:
            self.features.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        hw = images.shape[-2:]
        ph, pw = (-hw[0]) % self.stride, (-hw[1]) % self.stride
        x = F.pad(images, (0, pw, 0, ph))
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            feats = self.features(x)
        logits = F.interpolate(self.head(feats), size=x.shape[-2:], mode="bilinear")
        return logits[..., : hw[0], : hw[1]]


def build_seg_model(features: nn.Module, num_classes: int, cfg: ReadoutConfig) -> SegModel:
    """Linear head on the given maps (frozen), or UperNet on four maps (frozen or finetuned)."""
    if cfg.mode == "linear":
        return SegModel(features, LinearHead(features.dims, num_classes), frozen=True)
    return SegModel(features, UperNetHead(features.dims, num_classes, cfg.width), frozen=cfg.mode == "upernet")


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """mmseg ``slide`` window origins along one side: every ``stride``, the last window flush with the border."""
    n = max(size - crop + stride - 1, 0) // stride + 1
    return sorted({max(min(i * stride, size - crop), 0) for i in range(n)})


@torch.no_grad()
def sliding_window(model: nn.Module, image: torch.Tensor, num_classes: int, crop: int, stride: int) -> torch.Tensor:
    """Logits ``(C, H, W)`` of one float image ``(3, H, W)``: windows batched through ``model``, averaged."""
    h, w = image.shape[-2:]
    boxes = [(y, x) for y in window_starts(h, crop, stride) for x in window_starts(w, crop, stride)]
    ch, cw = min(crop, h), min(crop, w)
    windows = torch.stack([image[:, y : y + ch, x : x + cw] for y, x in boxes])
    logits = torch.cat([model(windows[s : s + 8]).float() for s in range(0, len(windows), 8)])
    total = image.new_zeros(num_classes, h, w, dtype=torch.float32)
    count = image.new_zeros(1, h, w, dtype=torch.float32)
    for (y, x), lg in zip(boxes, logits, strict=True):
        total[:, y : y + ch, x : x + cw] += lg
        count[:, y : y + ch, x : x + cw] += 1
    return total / count


def _lr_factor(step: int, warmup: int, steps: int) -> float:
    """Linear warm-up, then polynomial (power 1) decay to 0 at ``steps``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, 1.0 - (step - warmup) / max(steps - warmup, 1))


def train_readout(model: SegModel, train: Dataset, cfg: ReadoutConfig, device: torch.device) -> list[float]:
    """Train the head (and the backbone when not frozen) for ``cfg.steps``; returns the loss per step."""
    crops = TrainCrops(train, cfg.crop, cfg.short_side, cfg.scale_range)
    sampler = GlobalBatchSampler(len(train), cfg.batch_size, cfg.steps, cfg.seed)
    loader = DataLoader(
        crops, batch_sampler=sampler, num_workers=cfg.workers, multiprocessing_context=worker_context(cfg.workers)
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg.warmup, cfg.steps))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    net = nn.parallel.DistributedDataParallel(model) if dist.is_distributed() else model
    model.train()
    ignore = train.ignore_index
    curve = []
    for images, labels in tqdm(loader, desc=f"seg {cfg.mode}", disable=not dist.is_main() or None):
        images, labels = to_float_images(images.to(device)), labels.to(device)
        with autocast_for(device):
            logits = net(images)
        loss_sum = F.cross_entropy(logits.float(), labels, ignore_index=ignore, reduction="sum")
        curve.append(global_step(loss_sum, (labels != ignore).sum(), opt, scaler, sched))
    return curve


@torch.no_grad()
def evaluate_readout(model: nn.Module, val: Dataset, cfg: ReadoutConfig, device: torch.device) -> dict[str, float]:
    """mIoU / pixel accuracy (percent) of sliding-window predictions at the label resolution, over all ranks."""
    model.eval()
    c = val.num_classes
    cm = torch.zeros(c, c, dtype=torch.long)
    for image, label in tqdm(shard_loader(val, cfg.workers), desc="seg eval", disable=not dist.is_main() or None):
        scaled, _ = rescale(image, label, cfg.short_side)
        with autocast_for(device):
            logits = sliding_window(model, to_float_images(scaled.to(device)), c, cfg.crop, cfg.stride)
        pred = F.interpolate(logits[None], size=tuple(label.shape), mode="bilinear")[0].argmax(0).cpu()
        cm += confusion_matrix(label, pred, c, c, val.ignore_index)
    return segmentation_scores(reduce_confusion(cm))


def seg_readout(
    features: nn.Module, train: Dataset, val: Dataset, cfg: ReadoutConfig, device: torch.device
) -> dict[str, float]:
    """Train a readout on ``train`` and score it on ``val``: ``miou``, ``acc``, ``final_loss``."""
    if train.num_classes != val.num_classes:
        raise ValueError(f"train has {train.num_classes} classes but val has {val.num_classes}")
    model = build_seg_model(features, train.num_classes, cfg).to(device)
    curve = train_readout(model, train, cfg, device)
    scores = evaluate_readout(model, val, cfg, device)
    return {**scores, "final_loss": curve[-1] if curve else math.nan}
