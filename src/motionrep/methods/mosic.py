"""MoSiC: dense features made consistent along point tracks by optimal-transport clustering with an EMA teacher.

A pretrained ViT (student) and its EMA copy (teacher) encode a clip; features are read at the tracked points, mapped
by an MLP head onto ``K`` prototypes, the teacher's scores are balanced by Sinkhorn-Knopp into cluster targets, and
the student's scores must predict them (``docs/methods/mosic.md``). Only the last blocks, the head and the
prototypes train.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from motionrep.config import ConfigError, MethodConfig
from motionrep.methods.base import Method, register_method
from motionrep.methods.mosic_core import (
    ASSIGNMENTS,
    LOSS_NORMS,
    Prototypes,
    cluster_cross_entropy,
    kept_mask,
    num_dropped,
    ot_assignments,
    random_keep,
    sample_tracks,
    scatter_kept,
    track_token_kept,
    usage_entropy,
    weighted_loss,
)
from motionrep.models.heads import MLPProjector
from motionrep.models.vit import build_vit
from motionrep.models.weights import load_encoder_into
from motionrep.ops.ema import make_teacher
from motionrep.train.optim import decay_groups

if TYPE_CHECKING:
    from motionrep.config import Config
    from motionrep.data.batch import ClipBatch
    from motionrep.data.datasets import ClipDataset

SAMPLING_MODES = ("token", "bilinear")
INIT_WEIGHTS = ("teacher", "student")
TRACKER_NAMES = ("ground_truth", "gt", "dis", "lk", "cotracker")


@dataclass
class SinkhornConfig:
    epsilon: float = 0.05
    iterations: int = 10
    log_domain: bool = False


@dataclass
class SamplingConfig:
    student: str = "token"
    teacher: str = "token"


@dataclass
class ClipViewKeys:
    """The clip view (mosic.md §3.2): squash to ``resize``², flip with probability ``flip_p``, random-resized crop
    of area fraction ``crop_scale`` resized to ``size``²."""

    resize: int = 224
    size: int = 224
    crop_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])
    flip_p: float = 0.5


@dataclass
class MoSiCConfig(MethodConfig):
    """The ``method.*`` keys of MoSiC (mosic.md §8.6; ``docs/methods/mosic.md``). ``init``: the pretrained encoder
    to start from, any file :func:`motionrep.models.weights.load_encoder_into` reads (a motionrep run directory,
    checkpoint or export, an official DINO / DINOv2 / Midway / MoSiC file)."""

    name: str = "mosic"
    init: str | None = None
    init_weights: str = "teacher"  # which encoder of a training checkpoint: teacher (if any, else student) | student
    tracker: str = "ground_truth"  # ground_truth (synthetic world) | dis | lk | cotracker
    tracker_options: dict[str, Any] = field(default_factory=dict)  # keyword settings of the tracker
    views: ClipViewKeys = field(default_factory=ClipViewKeys)
    backbone_lr_scale: float = 0.1
    grid_size: int = 16
    num_prototypes: int = 100
    head_dims: list[int] = field(default_factory=lambda: [1024, 1024, 512, 256])
    student_temp: float = 0.1
    sinkhorn: SinkhornConfig = field(default_factory=SinkhornConfig)
    assignment: str = "per_frame_joint"
    soft_targets: bool = False
    symmetric: bool = False
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    loss_norm: str = "visible"
    mask_ratio: float = 0.1
    ema_teacher: bool = True
    trainable_blocks: Any = 2
    trainable_block_indices: list[int] | None = None

    def __post_init__(self) -> None:
        """Reject unsupported values and combinations with a message naming the key."""
        if self.assignment not in ASSIGNMENTS:
            raise ValueError(f"method.assignment must be one of {ASSIGNMENTS}, got {self.assignment!r}")
        if self.loss_norm not in LOSS_NORMS:
            raise ValueError(f"method.loss_norm must be one of {LOSS_NORMS}, got {self.loss_norm!r}")
        for branch in ("student", "teacher"):
            mode = getattr(self.sampling, branch)
            if mode not in SAMPLING_MODES:
                raise ValueError(f"method.sampling.{branch} must be one of {SAMPLING_MODES}, got {mode!r}")
        if self.symmetric and self.assignment != "per_frame_joint":
            raise ValueError("method.symmetric applies to assignment 'per_frame_joint' only")
        if self.grid_size < 1 or self.num_prototypes < 2 or not self.head_dims or self.student_temp <= 0:
            raise ValueError("method needs grid_size >= 1, num_prototypes >= 2, non-empty head_dims, student_temp > 0")
        if self.init_weights not in INIT_WEIGHTS:
            raise ValueError(f"method.init_weights must be one of {INIT_WEIGHTS}, got {self.init_weights!r}")
        if self.tracker not in TRACKER_NAMES:
            raise ValueError(f"method.tracker must be one of {TRACKER_NAMES}, got {self.tracker!r}")
        v = self.views
        if v.size < 1 or v.resize < 1 or len(v.crop_scale) != 2 or not 0 < v.crop_scale[0] <= v.crop_scale[1] <= 1:
            raise ValueError("method.views needs size, resize >= 1 and 0 < crop_scale[0] <= crop_scale[1] <= 1")
        if not 0.0 <= v.flip_p <= 1.0:
            raise ValueError("method.views.flip_p must be in [0, 1]")
        if self.backbone_lr_scale < 0:
            raise ValueError("method.backbone_lr_scale must be >= 0")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"method.mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if self.sinkhorn.epsilon <= 0 or self.sinkhorn.iterations < 1:
            raise ValueError("method.sinkhorn needs epsilon > 0 and iterations >= 1")
        tb = self.trainable_blocks
        if not (tb == "all" or (isinstance(tb, int) and not isinstance(tb, bool) and tb >= 1)):
            raise ValueError(f"method.trainable_blocks must be a positive integer or 'all', got {tb!r}")


def trainable_block_ids(depth: int, cfg: MoSiCConfig) -> list[int] | None:
    """Indices of the backbone blocks that train (``None``: the whole backbone, ``trainable_blocks: all``).

    ``trainable_block_indices`` (replication of the released name match) wins over ``trainable_blocks`` (counted
    from the end, so the last two blocks of any depth by default).
    """
    if cfg.trainable_block_indices is not None:
        ids = sorted(set(cfg.trainable_block_indices))
        if not ids or ids[0] < 0 or ids[-1] >= depth:
            raise ValueError(
                f"method.trainable_block_indices must lie in 0..{depth - 1}, got {cfg.trainable_block_indices}"
            )
        return ids
    if cfg.trainable_blocks == "all":
        return None
    if cfg.trainable_blocks > depth:
        raise ValueError(f"method.trainable_blocks={cfg.trainable_blocks} exceeds the backbone depth {depth}")
    return list(range(depth - cfg.trainable_blocks, depth))


@register_method("mosic")
class MoSiC(Method):
    """Student encoder + MLP head + prototypes, and their EMA teacher copies (``method.ema_teacher: true``).

    The encoder is built from ``cfg.model`` and loaded from ``method.init`` before the teacher is copied from it.
    """

    Config = MoSiCConfig

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        mc: MoSiCConfig = cfg.method
        self.method_cfg = mc
        encoder = build_vit(cfg.model.name, **cfg.model.overrides())
        self.init_source = "random"
        if mc.init:
            try:
                self.init_source = load_encoder_into(encoder, mc.init, mc.init_weights)
            except (OSError, ValueError) as e:
                raise ConfigError(f"method.init: {e}") from None
        self.encoder = encoder
        self.trainable_ids = trainable_block_ids(len(encoder.blocks), mc)
        if self.trainable_ids is not None:
            encoder.requires_grad_(False)
            for i in self.trainable_ids:
                encoder.blocks[i].requires_grad_(True)
        self.head = MLPProjector(encoder.embed_dim, mc.head_dims)
        self.prototypes = Prototypes(mc.num_prototypes, mc.head_dims[-1])
        if mc.ema_teacher:
            self.teacher_encoder = make_teacher(encoder).eval()
            self.teacher_head = make_teacher(self.head)
            self.teacher_prototypes = make_teacher(self.prototypes)

    def train(self, mode: bool = True) -> MoSiC:
        super().train(mode)
        if self.method_cfg.ema_teacher:
            self.teacher_encoder.eval()
        return self

    def param_groups(self) -> list[dict[str, Any]]:
        """Trainable backbone blocks at ``backbone_lr_scale`` × the lr (1:10 by default), head and prototypes at the
        lr; weight decay on >= 2-D weights (prototypes included), none on biases and 1-D parameters."""
        head = chain(self.head.named_parameters("head"), self.prototypes.named_parameters("prototypes"))
        return decay_groups(self.encoder.named_parameters(), self.method_cfg.backbone_lr_scale) + decay_groups(head)

    @classmethod
    def build_dataset(cls, cfg: Config) -> ClipDataset:
        """Clips of ``data.clip_frames`` frames at ``data.clip_step`` with tracks of a ``grid_size``² query grid."""
        from motionrep.data.datasets import ClipDataset
        from motionrep.data.sampling import ClipSampler
        from motionrep.data.views import ClipViewsConfig
        from motionrep.methods.base import video_catalog
        from motionrep.tracking.base import get_tracker

        mc: MoSiCConfig = cfg.method
        v = mc.views
        views = ClipViewsConfig(
            resize=v.resize, size=v.size, crop_scale=tuple(v.crop_scale), flip_p=v.flip_p, grid=mc.grid_size
        )
        tracker = None if mc.tracker in ("ground_truth", "gt") else get_tracker(mc.tracker, **mc.tracker_options)
        sampler = ClipSampler(cfg.data.clip_frames, cfg.data.clip_step)
        return ClipDataset(video_catalog(cfg.data), sampler, views, tracker, seed=cfg.train.seed)

    def training_step(self, batch: ClipBatch, step: int) -> dict[str, torch.Tensor]:
        return self.compute_losses(batch.frames, batch.tracks, batch.visible, batch.in_crop)

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(student, teacher) module pairs for the EMA update after every optimiser step."""
        if not self.method_cfg.ema_teacher:
            return []
        return [
            (self.encoder, self.teacher_encoder),
            (self.head, self.teacher_head),
            (self.prototypes, self.teacher_prototypes),
        ]

    def student_frames(self, num_frames: int) -> int:
        """How many leading frames the student encodes with gradients: only frame 0 when only frame-0 predictions
        enter the loss (``per_frame_joint`` without the symmetric term)."""
        mc = self.method_cfg
        return 1 if mc.assignment == "per_frame_joint" and not mc.symmetric else num_frames

    def teacher_frames(self, num_frames: int) -> int:
        """How many leading frames get OT targets: frame 0 only when they are propagated along the tracks."""
        return 1 if self.method_cfg.assignment == "propagate_frame0" else num_frames

    def _student_tokens(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """Student patch tokens; the frozen leading part (embedding and blocks before the first trainable one) runs
        under ``no_grad`` so that it keeps no activations."""
        enc = self.encoder
        if self.trainable_ids is None:
            return enc.patch_tokens(enc(x, keep=keep))
        first = self.trainable_ids[0]
        with torch.no_grad():
            h = enc.embed(x, keep)
            for block in enc.blocks[:first]:
                h = block(h)
        for block in enc.blocks[first:]:
            h = block(h)
        return enc.patch_tokens(enc.norm(h))

    def _scores(
        self,
        tokens: torch.Tensor,
        tracks: torch.Tensor,
        grid_hw: tuple[int, int],
        mode: str,
        head: nn.Module,
        prototypes: Prototypes,
    ) -> torch.Tensor:
        """Cosine scores (B, T, N, K) of the projected features at the track points; tokens (B, T, s2, D)."""
        return prototypes(head(sample_tracks(tokens, tracks, self.encoder.patch_size, grid_hw, mode=mode)))

    def _student_scores(
        self, frames: torch.Tensor, tracks: torch.Tensor, keep: torch.Tensor | None, grid_hw: tuple[int, int]
    ) -> torch.Tensor:
        """Student scores (B, T', N, K) of clips (B, T', 3, H, W), with the clip's kept tokens (B, K_keep) if any."""
        b, t = frames.shape[:2]
        num_tokens = grid_hw[0] * grid_hw[1]
        frame_keep = None if keep is None else keep.repeat_interleave(t, dim=0)
        tokens = self._student_tokens(frames.flatten(0, 1), frame_keep)
        if frame_keep is not None:
            tokens = scatter_kept(tokens, frame_keep, num_tokens)
        tokens = tokens.view(b, t, num_tokens, -1)
        return self._scores(tokens, tracks, grid_hw, self.method_cfg.sampling.student, self.head, self.prototypes)

    def compute_losses(
        self,
        frames: torch.Tensor,
        tracks: torch.Tensor,
        visible: torch.Tensor,
        in_crop: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Loss and statistics for clips ``frames`` (B, T, 3, H, W) in [0, 1] with tracks (B, T, N, 2) in (x, y)
        pixels of these frames, ``visible`` and ``in_crop`` (B, T, N) bool."""
        cfg = self.method_cfg
        if frames.dim() != 5 or tracks.dim() != 4 or tracks.shape[:2] != frames.shape[:2] or tracks.shape[-1] != 2:
            raise ValueError(
                f"expected frames (B, T, 3, H, W) and tracks (B, T, N, 2), got {tuple(frames.shape)} and "
                f"{tuple(tracks.shape)}"
            )
        if visible.shape != tracks.shape[:-1] or (in_crop is not None and in_crop.shape != visible.shape):
            raise ValueError(f"visible / in_crop must have shape {tuple(tracks.shape[:-1])}")
        b, t = frames.shape[:2]
        grid_hw = self.encoder.grid_size(tuple(frames.shape[-2:]))
        num_tokens = grid_hw[0] * grid_hw[1]
        self.prototypes.normalize_()

        ts = self.student_frames(t)
        keep = (
            random_keep(b, num_tokens, cfg.mask_ratio, frames.device)
            if num_dropped(num_tokens, cfg.mask_ratio)
            else None
        )
        s_scores = self._student_scores(frames[:, :ts], tracks[:, :ts], keep, grid_hw)

        tt = self.teacher_frames(t)
        epsilon = cfg.sinkhorn.epsilon
        if cfg.ema_teacher:
            self.teacher_prototypes.normalize_()
            with torch.no_grad():
                t_tokens = self.teacher_encoder.patch_tokens(self.teacher_encoder(frames[:, :tt].flatten(0, 1)))
                t_scores = self._scores(
                    t_tokens.view(b, tt, num_tokens, -1),
                    tracks[:, :tt],
                    grid_hw,
                    cfg.sampling.teacher,
                    self.teacher_head,
                    self.teacher_prototypes,
                )
        else:  # the student's own (masked) scores, detached, at every frame that needs a target
            t_scores, epsilon = s_scores[:, :tt].detach(), 2.0 * epsilon
            if tt > ts:
                with torch.no_grad():
                    rest = self._student_scores(frames[:, ts:tt], tracks[:, ts:tt], keep, grid_hw)
                t_scores = torch.cat([t_scores, rest], dim=1)
        targets = ot_assignments(t_scores, epsilon, cfg.sinkhorn.iterations, cfg.sinkhorn.log_domain)

        base = visible.float() if in_crop is None else visible.float() * in_crop.float()
        kept = None if keep is None else kept_mask(keep, num_tokens)

        def weights(pred_tracks: torch.Tensor) -> torch.Tensor:
            """Visibility × in-crop × whether the student tokens making the prediction were kept."""
            if kept is None:
                return base
            used = track_token_kept(kept, pred_tracks, self.encoder.patch_size, grid_hw, cfg.sampling.student)
            return base * used.float()

        tau, soft = cfg.student_temp, cfg.soft_targets
        if cfg.assignment == "per_frame_joint":
            w = weights(tracks[:, :1])
            loss = weighted_loss(cluster_cross_entropy(s_scores[:, :1], targets, tau, soft), w, cfg.loss_norm)
            if cfg.symmetric:
                ce_sym = cluster_cross_entropy(s_scores, targets[:, :1], tau, soft)
                loss = loss + weighted_loss(ce_sym, weights(tracks), cfg.loss_norm)
        else:
            w = weights(tracks)
            loss = weighted_loss(cluster_cross_entropy(s_scores, targets, tau, soft), w, cfg.loss_norm)
        return {
            "loss": loss,
            "weight_frac": w.expand_as(base).mean().detach(),
            "visible_frac": visible.float().mean(),
            "cluster_entropy": usage_entropy(targets),
        }
