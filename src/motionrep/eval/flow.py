"""Motion protocols: a flow probe on frozen (or finetuned) tokens, parameter-free feature-matching flow, and the
OpenCV DIS baseline. Flow is ``(dx, dy)`` in pixels from the first frame to the second; scores are EPE and the
percentages of valid pixels with EPE below 1 / 3 / 5 px (``docs/evaluation.md``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from motionrep.data.labeled import FlowSet
from motionrep.eval.features import (
    CachedFeatures,
    FeatureExtractor,
    extract,
    figure_indices,
    module_device,
    to_float_images,
)
from motionrep.eval.metrics import flow_error_sums, flow_scores, reduce_sums
from motionrep.train import dist


@dataclass
class FlowResult:
    metrics: dict[str, float]
    predictions: torch.Tensor  # (n_fig, 2, H, W) predicted flow of the figure_indices validation pairs
    curve: list[float] = field(default_factory=list)  # training loss per step (probe only)


class PairFeatures(nn.Module):
    """Default probe input: the frozen dense features of both frames, concatenated along channels."""

    def __init__(self, extractor: FeatureExtractor):
        super().__init__()
        self.extractor = extractor
        self.stride = extractor.stride
        self.dim = 2 * extractor.dim

    def forward(self, image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
        both = self.extractor(torch.cat([image1, image2]))
        return torch.cat(both.chunk(2), dim=1)


class MidwayPairFeatures(nn.Module):
    """Midway's flow decoder input (the paper's DPT token maps): for frames t → t+1, the encoder's top-level tokens
    of frame t, the target-side tokens of the midway transformer at the highest objective level, and the forward
    predictions at the highest and lowest objective levels, concatenated along channels as a ``(B, C, h, w)`` map.
    """

    def __init__(self, encoder: nn.Module, dynamics: nn.Module):
        super().__init__()
        self.encoder, self.dynamics = encoder, dynamics
        self.levels = list(dynamics.config.levels)
        self.stride = int(encoder.patch_size)
        self.dim = 3 * int(encoder.embed_dim) + int(dynamics.config.motion_dim)

    def forward(self, image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
        return torch.cat(midway_token_maps(self.encoder, self.dynamics, image1, image2), dim=1)


def midway_token_maps(
    encoder: nn.Module, dynamics: nn.Module, image1: torch.Tensor, image2: torch.Tensor
) -> list[torch.Tensor]:
    """The paper's four flow-decoder inputs ``(B, C_i, h, w)`` for frames 1 → 2 through one shared encoder: the
    encoder's top level of frame 1, the midway target-side tokens at the highest objective level, and the forward
    predictions at the highest and lowest objective levels. Gradients reach the encoder through both frames."""
    b = image1.shape[0]
    h, w = encoder.grid_size(tuple(image1.shape[-2:]))
    prefix = encoder.num_prefix_tokens
    taps = encoder(torch.cat([image1, image2]), taps=list(dynamics.config.levels))
    taps = [torch.cat([t[:, :1], t[:, prefix:]], dim=1) for t in taps]  # CLS + patches: registers dropped
    source, target = [t[:b] for t in taps], [t[b:] for t in taps]
    states = dynamics(source, target, grid_hw=(h, w), detach_target=False).states  # ascending objective levels
    cls = int(dynamics.config.use_cls_token)
    maps = [source[-1][:, 1:], states[-1].midway_target[:, cls:], states[-1].prediction[:, cls:]]
    maps.append(states[0].prediction[:, cls:])
    return [m.transpose(1, 2).reshape(b, -1, h, w) for m in maps]


class ResidualConvUnit(nn.Module):
    """DPT's residual unit: ``x + conv(relu(conv(relu(x))))``."""

    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FlowHead(nn.Module):
    """A light DPT-style decoder: 1x1 projection, then ``log2(stride) - 1`` stages of residual unit + 2x bilinear
    upsampling (to half the image resolution, like DPT's head), a 3x3 output convolution to (dx, dy), and a final
    bilinear resize to the exact image size."""

    def __init__(self, in_dim: int, stride: int, width: int = 32):
        super().__init__()
        self.proj = nn.Conv2d(in_dim, width, 1)
        self.stages = nn.ModuleList(ResidualConvUnit(width) for _ in range(max(0, round(math.log2(stride)) - 1)))
        self.out = nn.Conv2d(width, 2, 3, padding=1)
        self.stride = stride

    def forward(self, x: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
        x = self.proj(x)
        for stage in self.stages:
            x = F.interpolate(stage(x), scale_factor=2, mode="bilinear", align_corners=False)
        flow = self.out(F.relu(x)) * self.stride
        return F.interpolate(flow, size=out_hw, mode="bilinear", align_corners=False)


def epe_loss(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean end-point error over valid pixels."""
    epe = torch.linalg.vector_norm(pred - gt, dim=1)
    return (epe * valid).sum() / valid.sum().clamp_min(1)


def _score(predict, val: FlowSet, batch_size: int) -> tuple[dict[str, float], torch.Tensor]:
    """Run ``predict(start, end) -> flow`` on this rank's shard of ``val``; reduce error sums over ranks. Also
    returns the predictions of the :func:`~motionrep.eval.features.figure_indices` pairs."""
    part = dist.shard(len(val))
    show = figure_indices(len(val))
    sums = torch.zeros(5, dtype=torch.float64)
    shown = []
    for s in range(part.start, part.stop, batch_size):
        e = min(s + batch_size, part.stop)
        pred = predict(s, e).cpu()
        sums += flow_error_sums(pred, val.flow[s:e], val.valid[s:e])
        shown.append(pred[show[(show >= s) & (show < e)] - s])
    preds = torch.cat(shown) if shown else torch.zeros(0, *val.flow.shape[1:])
    return flow_scores(reduce_sums(sums)), dist.all_gather_cat(preds)


def frozen_pair_features(
    extractor: FeatureExtractor, pair_features: nn.Module | None, data: FlowSet, batch_size: int
) -> torch.Tensor:
    """Probe inputs of every pair, without gradients: the two frames' features (shared with the other protocols
    through :func:`extract`), or the ``pair_features`` module's output."""
    if pair_features is not None:
        return extract(pair_features, data.image1, data.image2, batch_size=batch_size, desc="flow_probe pairs")
    return torch.cat([extract(extractor, data.image1), extract(extractor, data.image2)], dim=1)


def flow_probe(
    extractor: FeatureExtractor,
    train: FlowSet,
    val: FlowSet,
    steps: int = 300,
    batch_size: int = 16,
    lr: float = 1e-3,
    width: int = 32,
    finetune: bool = False,
    backbone_lr_scale: float = 0.1,
    pair_features: nn.Module | None = None,
    seed: int = 0,
) -> FlowResult:
    """Train a :class:`FlowHead` on the features of both frames to regress flow (mean EPE over valid pixels,
    AdamW, cosine schedule) and score it on ``val``.

    Frozen (default): features are computed once, without gradients. ``finetune``: a copy of the backbone is
    trained too, at ``lr * backbone_lr_scale``. ``pair_features``: a module ``(image1, image2) -> (B, C, h, w)``
    with ``stride`` and ``dim`` that replaces the concatenated frame features (the hook for a learned decoder
    such as Midway's dynamics).
    """
    base = extractor.extractor if isinstance(extractor, CachedFeatures) else extractor  # finetuning copies it
    pair = pair_features if pair_features is not None else PairFeatures(base)
    device = module_device(extractor)
    head = FlowHead(pair.dim, pair.stride, width).to(device)
    hw = tuple(train.flow.shape[-2:])
    params = [{"params": head.parameters(), "lr": lr}]
    if finetune:
        pair = copy.deepcopy(pair).train()
        params.append({"params": [p for p in pair.parameters() if p.requires_grad], "lr": lr * backbone_lr_scale})
    else:
        ftrain = frozen_pair_features(extractor, pair_features, train, batch_size)
    opt = torch.optim.AdamW(params, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    gen = torch.Generator().manual_seed(seed)
    curve = []
    for _ in tqdm(range(steps), desc="flow_probe", leave=False, disable=not dist.is_main() or None):
        idx = torch.randint(len(train), (min(batch_size, len(train)),), generator=gen)
        if finetune:
            feats = pair(to_float_images(train.image1[idx].to(device)), to_float_images(train.image2[idx].to(device)))
        else:
            feats = ftrain[idx].to(device)
        loss = epe_loss(head(feats, hw), train.flow[idx].to(device), train.valid[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        curve.append(loss.item())
    head.eval()
    pair.eval()
    fval = None if finetune else frozen_pair_features(extractor, pair_features, val, batch_size)

    @torch.no_grad()
    def predict(s: int, e: int) -> torch.Tensor:
        if fval is not None:
            return head(fval[s:e].to(device), hw)
        feats = pair(to_float_images(val.image1[s:e].to(device)), to_float_images(val.image2[s:e].to(device)))
        return head(feats.float(), hw)

    metrics, preds = _score(predict, val, batch_size)
    return FlowResult(metrics, preds, curve)


def match_flow(f1: torch.Tensor, f2: torch.Tensor, stride: int, radius: int = 3, temperature: float = 0.05):
    """Token-level flow ``(B, 2, h, w)`` in pixels by soft-argmax of cosine similarity over a ``(2r+1)^2`` window.

    For each token of ``f1 (B, C, h, w)``, similarities to the tokens of ``f2`` displaced by ``(dx, dy)`` in
    ``[-r, r]^2`` (outside the frame excluded) are soft-maxed at ``temperature``; the flow is the expected
    displacement times ``stride``.
    """
    b, c, h, w = f1.shape
    k = 2 * radius + 1
    a = F.normalize(f1, dim=1)
    bnorm = F.normalize(f2, dim=1)
    windows = F.unfold(bnorm, k, padding=radius).view(b, c, k * k, h, w)
    inside = F.unfold(torch.ones(1, 1, h, w, device=f1.device), k, padding=radius).view(1, k * k, h, w) > 0
    sims = (a[:, :, None] * windows).sum(1).masked_fill(~inside, float("-inf"))  # (B, k*k, h, w)
    weights = torch.softmax(sims / temperature, dim=1)
    d = torch.arange(-radius, radius + 1, device=f1.device, dtype=f1.dtype)
    dy, dx = torch.meshgrid(d, d, indexing="ij")  # unfold enumerates the window row-major (dy outer, dx inner)
    flow_x = (weights * dx.reshape(1, -1, 1, 1)).sum(1)
    flow_y = (weights * dy.reshape(1, -1, 1, 1)).sum(1)
    return torch.stack([flow_x, flow_y], dim=1) * stride


def tokens_to_pixels(flow: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinearly upsample a token-level flow (values already in pixels) to ``out_hw``; token centres align."""
    return F.interpolate(flow, size=out_hw, mode="bilinear", align_corners=False)


def flow_match(
    extractor: FeatureExtractor,
    val: FlowSet,
    radius: int = 3,
    temperature: float = 0.05,
    batch_size: int = 32,
) -> FlowResult:
    """Parameter-free flow from frozen features (:func:`match_flow`), upsampled to pixels; ``epe``, ``px*``."""
    device = module_device(extractor)
    hw = tuple(val.flow.shape[-2:])
    f1, f2 = extract(extractor, val.image1), extract(extractor, val.image2)

    @torch.no_grad()
    def predict(s: int, e: int) -> torch.Tensor:
        flow = match_flow(f1[s:e].to(device), f2[s:e].to(device), extractor.stride, radius, temperature)
        return tokens_to_pixels(flow, hw)

    metrics, preds = _score(predict, val, batch_size)
    return FlowResult(metrics, preds)


def dis_flow(image1: torch.Tensor, image2: torch.Tensor, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM):
    """OpenCV DIS flow ``(2, H, W)`` float32 between two uint8 frames ``(3, H, W)`` (RGB), on grey levels."""
    dis = cv2.DISOpticalFlow_create(preset)
    g1, g2 = (
        cv2.cvtColor(np.ascontiguousarray(x.permute(1, 2, 0).numpy()), cv2.COLOR_RGB2GRAY) for x in (image1, image2)
    )
    flow = dis.calc(g1, g2, None)
    return torch.from_numpy(flow).permute(2, 0, 1).contiguous()


def flow_dis(val: FlowSet) -> FlowResult:
    """The DIS baseline on ``val`` (frames must be uint8)."""
    if val.image1.dtype != torch.uint8:
        raise ValueError("the DIS baseline needs uint8 frames")

    def predict(s: int, e: int) -> torch.Tensor:
        return torch.stack([dis_flow(a, b) for a, b in zip(val.image1[s:e], val.image2[s:e], strict=True)])

    metrics, preds = _score(predict, val, batch_size=64)
    return FlowResult(metrics, preds)


def flow_zero(val: FlowSet) -> FlowResult:
    """Reference scores of the zero flow ("nothing moves"): its EPE is the mean true flow magnitude."""
    metrics, preds = _score(lambda s, e: torch.zeros_like(val.flow[s:e]), val, batch_size=64)
    return FlowResult(metrics, preds)
