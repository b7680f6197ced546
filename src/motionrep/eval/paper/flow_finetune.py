"""Optical-flow finetuning in the CroCo-Flow style used by Midway (§9.2, ``docs/paper_protocols.md``).

:class:`FlowModel`: both frames go through one shared encoder (taps at the Midway levels); Midway's dynamics
(:class:`~motionrep.models.dynamics.MidwayDynamics`, pretrained for a Midway run, randomly initialised for every
other backbone) run frame 1 → frame 2, and a :class:`~motionrep.eval.paper.heads.DPTHead` reads four token maps:
the encoder's top level of frame 1, the midway transformer's target-side tokens at the highest objective level,
and the forward predictions at the highest and lowest objective levels. It outputs flow (dx, dy) and a confidence
channel. Position embeddings of the encoder and of the midway path are resampled to the crop grid by the models.

Training: random ``320 x 384`` crops (padding invalid), the bounded Laplacian loss of CroCo-Flow
(``|gt - pred|_1 / s + log s`` with ``s = a + (b - a) sigmoid(conf)``, a = 0.25, b = 4) over valid pixels,
normalised by the global valid count; AdamW (lr 2e-5, betas 0.9/0.95, wd 0.05), linear warm-up then cosine; one
seeded global batch per step so N ranks equal one. ``frozen`` trains the DPT head only (paper Table 7).
Inference: full-resolution tiling with crop-sized windows (``overlap``), each tile's flow weighted by ``1 / s``.
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
from motionrep.eval.flow import midway_token_maps
from motionrep.eval.metrics import flow_error_sums, flow_scores, reduce_sums
from motionrep.eval.paper.features import default_levels
from motionrep.eval.paper.heads import DPTHead
from motionrep.eval.paper.streams import GlobalBatchSampler, global_step, iterate_shard
from motionrep.models.dynamics import MidwayDynamics, MidwayDynamicsConfig
from motionrep.train import dist


@dataclass
class FlowFinetuneConfig:
    steps: int = 900_000  # CroCo-Flow: 240 epochs x 30k pairs at batch 8
    batch_size: int = 8
    lr: float = 2e-5
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    warmup: int = 3750  # one CroCo epoch
    crop: tuple[int, int] = (320, 384)
    overlap: float = 0.5
    frozen: bool = False
    width: int = 256  # DPT channels
    conf_range: tuple[float, float] = (0.25, 4.0)
    workers: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or min(self.crop) < 1 or not 0.0 <= self.overlap < 1.0:
            raise ValueError("need steps >= 1, a positive crop and 0 <= overlap < 1")


def baseline_dynamics(encoder: nn.Module) -> MidwayDynamics:
    """Randomly initialised Midway dynamics shaped for ``encoder`` (levels at quarters of the depth, midway width
    D/2 with half the encoder's heads, as ViT-S's 384/192 and 6/3), on the encoder's native grid."""
    heads = encoder.num_heads
    cfg = MidwayDynamicsConfig(
        levels=default_levels(encoder.depth),
        motion_dim=encoder.embed_dim // 2,
        midway_heads=max(1, heads // 2),
        forward_heads=heads,
        backward_heads=heads,
    )
    return MidwayDynamics(cfg, encoder.embed_dim, encoder.pos_grid)


class FlowModel(nn.Module):
    """Encoder + Midway dynamics + DPT head: ``(image1, image2)`` float in [0, 1] → flow ``(B, 2, H, W)`` and
    confidence logits ``(B, 1, H, W)``. Sides must be multiples of the patch size."""

    def __init__(self, encoder: nn.Module, dynamics: MidwayDynamics, width: int = 256):
        super().__init__()
        self.encoder, self.dynamics = encoder, dynamics
        d, dm = encoder.embed_dim, dynamics.config.motion_dim
        self.head = DPTHead([d, dm, d, d], 3, width)

    def token_maps(self, image1: torch.Tensor, image2: torch.Tensor) -> list[torch.Tensor]:
        """The four DPT inputs ``(B, C_i, h, w)`` (:func:`~motionrep.eval.flow.midway_token_maps`)."""
        return midway_token_maps(self.encoder, self.dynamics, image1, image2)

    def forward(self, image1: torch.Tensor, image2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(self.token_maps(image1, image2), image1.shape[-2:])
        return out[:, :2], out[:, 2:]


def bounded_scale(conf: torch.Tensor, a: float = 0.25, b: float = 4.0) -> torch.Tensor:
    """CroCo-Flow's bounded Laplacian scale ``a + (b - a) sigmoid(conf)``."""
    return a + (b - a) * torch.sigmoid(conf)


def laplacian_sums(
    pred: torch.Tensor, conf: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, a: float = 0.25, b: float = 4.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over valid pixels of ``|gt - pred|_1 / s + log s`` and the number of valid pixels."""
    s = bounded_scale(conf[:, 0], a, b)
    per_pixel = (gt - pred).abs().sum(1) / s + s.log()
    return (per_pixel * valid).sum(), valid.sum()


class FlowCrops(Dataset):
    """``(index, seed)`` → a random ``crop`` window of a flow pair (zero-padded and invalid outside the image)."""

    def __init__(self, dataset: Dataset, crop: tuple[int, int]):
        self.dataset, self.crop = dataset, crop

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        rng = np.random.default_rng(seed)
        image1, image2, flow, valid = self.dataset[index]
        ch, cw = self.crop
        ph, pw = max(0, ch - flow.shape[1]), max(0, cw - flow.shape[2])
        image1, image2, flow = (F.pad(t, (0, pw, 0, ph)) for t in (image1, image2, flow))
        valid = F.pad(valid, (0, pw, 0, ph), value=False)
        y, x = rng.integers(0, flow.shape[1] - ch + 1), rng.integers(0, flow.shape[2] - cw + 1)
        win = (slice(y, y + ch), slice(x, x + cw))
        return image1[:, win[0], win[1]], image2[:, win[0], win[1]], flow[:, win[0], win[1]], valid[win]


def _lr_factor(step: int, warmup: int, steps: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(steps - warmup, 1))))


def train_flow(model: FlowModel, train: Dataset, cfg: FlowFinetuneConfig, device: torch.device) -> list[float]:
    """Finetune ``model`` in place for ``cfg.steps``; returns the loss per step."""
    if cfg.frozen:
        model.encoder.requires_grad_(False)
        model.dynamics.requires_grad_(False)
    sampler = GlobalBatchSampler(len(train), cfg.batch_size, cfg.steps, cfg.seed)
    loader = DataLoader(
        FlowCrops(train, cfg.crop),
        batch_sampler=sampler,
        num_workers=cfg.workers,
        multiprocessing_context=worker_context(cfg.workers),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, cfg.warmup, cfg.steps))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    net = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True) if dist.is_distributed() else model
    model.train()
    curve = []
    for image1, image2, flow, valid in tqdm(loader, desc="flow finetune", disable=not dist.is_main() or None):
        image1, image2 = to_float_images(image1.to(device)), to_float_images(image2.to(device))
        flow, valid = flow.to(device), valid.to(device)
        with autocast_for(device):
            pred, conf = net(image1, image2)
        total, count = laplacian_sums(pred.float(), conf.float(), flow, valid, *cfg.conf_range)
        curve.append(global_step(total, count, opt, scaler, sched))
    return curve


def tile_starts(size: int, window: int, overlap: float) -> list[int]:
    """Window origins covering ``size`` (CroCo tiling): ``1 + ceil((size - window) / ((1 - overlap) window))``
    windows evenly spaced from 0 to ``size - window``; one window at 0 when the image is smaller."""
    if size <= window:
        return [0]
    n = 1 + math.ceil((size - window) / ((1 - overlap) * window))
    return np.linspace(0, size - window, n).round().astype(int).tolist()


@torch.no_grad()
def tiled_flow(
    model: nn.Module, image1: torch.Tensor, image2: torch.Tensor, crop: tuple[int, int], overlap: float,
    conf_range: tuple[float, float] = (0.25, 4.0),
) -> torch.Tensor:  # fmt: skip
    """Full-resolution flow ``(2, H, W)`` of one float pair ``(3, H, W)`` from crop-sized tiles (padded when the
    image is smaller), each pixel the ``1 / s``-weighted mean of the tiles covering it."""
    h, w = image1.shape[-2:]
    ch, cw = crop
    ph, pw = max(0, ch - h), max(0, cw - w)
    pair = F.pad(torch.stack([image1, image2]), (0, pw, 0, ph))
    boxes = [(y, x) for y in tile_starts(h, ch, overlap) for x in tile_starts(w, cw, overlap)]
    acc = pair.new_zeros(2, h + ph, w + pw, dtype=torch.float32)
    weight = pair.new_zeros(1, h + ph, w + pw, dtype=torch.float32)
    for y, x in boxes:
        tile = pair[:, :, y : y + ch, x : x + cw]
        with autocast_for(image1.device):
            flow, conf = model(tile[:1], tile[1:])
        wgt = 1.0 / bounded_scale(conf[0].float(), *conf_range)
        acc[:, y : y + ch, x : x + cw] += flow[0].float() * wgt
        weight[:, y : y + ch, x : x + cw] += wgt
    return (acc / weight.clamp_min(1e-12))[:, :h, :w]


@torch.no_grad()
def evaluate_flow(model: nn.Module, val: Dataset, cfg: FlowFinetuneConfig, device: torch.device) -> dict[str, float]:
    """EPE and px1/px3/px5 of tiled full-resolution predictions on ``val``, reduced over ranks."""
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64)
    for _, (image1, image2, flow, valid) in iterate_shard(val, cfg.workers, "flow eval"):
        i1, i2 = to_float_images(image1[None].to(device))[0], to_float_images(image2[None].to(device))[0]
        pred = tiled_flow(model, i1, i2, cfg.crop, cfg.overlap, cfg.conf_range).cpu()
        sums += flow_error_sums(pred, flow, valid)
    return flow_scores(reduce_sums(sums))


def flow_finetune(
    model: FlowModel, train: Dataset, vals: dict[str, Dataset], cfg: FlowFinetuneConfig, device: torch.device
) -> dict[str, float]:
    """Finetune on ``train`` and score on each named validation set: ``<name>.epe``, ``<name>.px1``, ...; plus
    ``final_loss``."""
    model.to(device)
    curve = train_flow(model, train, cfg, device)
    out = {"final_loss": curve[-1] if curve else math.nan}
    for name, val in vals.items():
        out |= {f"{name}.{k}": v for k, v in evaluate_flow(model, val, cfg, device).items()}
    return out
