"""DINO on frame pairs: the project's baseline, and the invariance term that Midway reuses.

:class:`MultiCropDINO` is the reusable two-frame multi-crop term (``docs/midway.md`` §4.3): student and EMA-teacher
DINO heads on the CLS token, the teacher seeing the 4 global crops of a pair, the student those plus every local
crop, the DINO loss over the (teacher view, student view) pairs of :func:`frame_pair_view_mask`, then the centre
update. :class:`DINO` (method ``dino``) is that term alone on a student encoder and its EMA teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from motionrep.config import MethodConfig
from motionrep.losses.dino import DINOLoss, frame_pair_view_mask
from motionrep.methods.base import Method, register_method, video_catalog
from motionrep.models.heads import DINOHead
from motionrep.models.vit import VisionTransformer, build_vit
from motionrep.ops.ema import make_teacher

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from motionrep.config import Config
    from motionrep.data.batch import PairBatch
    from motionrep.data.datasets import PairDataset


@dataclass
class DINOConfig(MethodConfig):
    name: str = "dino"
    out_dim: int = 1024  # prototypes (65536 in the paper recipe)
    hidden_dim: int = 512
    bottleneck_dim: int = 128
    head_layers: int = 3
    norm_last_layer: bool = False
    teacher_temp: float = 0.04
    student_temp: float = 0.1
    warmup_teacher_temp: float | None = None  # None: constant teacher temperature
    warmup_teacher_temp_steps: int = 0
    center_momentum: float = 0.9


def pair_views(globals_: Tensor, locals_: Tensor) -> tuple[Tensor, Tensor]:
    """Flatten a :class:`PairBatch`'s crops into view-major batches in the order of :func:`frame_pair_view_mask`.

    ``globals_`` ``(B, F, G, 3, h, w)`` -> ``(F*G*B, 3, h, w)`` ordered [frame 0 crops, frame 1 crops]; ``locals_``
    ``(B, F, L, 3, h', w')`` -> ``(F*L*B, 3, h', w')`` likewise.
    """
    g = globals_.transpose(0, 1).transpose(1, 2).flatten(0, 2)
    l_ = locals_.transpose(0, 1).transpose(1, 2).flatten(0, 2)
    return g, l_


class MultiCropDINO(nn.Module):
    """The two-frame multi-crop DINO term with its own student head, EMA teacher head and centred loss."""

    def __init__(self, embed_dim: int, cfg: DINOConfig, n_local_per_frame: int):
        super().__init__()
        self.head = DINOHead(
            embed_dim,
            cfg.out_dim,
            hidden=cfg.hidden_dim,
            bottleneck=cfg.bottleneck_dim,
            layers=cfg.head_layers,
            norm_last_layer=cfg.norm_last_layer,
        )
        self.teacher_head = make_teacher(self.head)
        self.loss = DINOLoss(
            cfg.out_dim,
            teacher_temp=cfg.teacher_temp,
            student_temp=cfg.student_temp,
            center_momentum=cfg.center_momentum,
            warmup_teacher_temp=cfg.warmup_teacher_temp,
            warmup_steps=cfg.warmup_teacher_temp_steps,
        )
        self.register_buffer("pairs", frame_pair_view_mask(n_local_per_frame=n_local_per_frame), persistent=False)

    def forward(
        self, student: VisionTransformer, teacher: VisionTransformer, globals_: Tensor, locals_: Tensor, step: int
    ) -> Tensor:
        """DINO loss of a batch of pairs (``PairBatch.globals`` / ``.locals``); updates the centre afterwards."""
        b = globals_.shape[0]
        n_teacher, n_student = self.pairs.shape
        if globals_.shape[1:3] != (2, 2) or locals_.shape[1] != 2 or 4 + 2 * locals_.shape[2] != n_student:
            raise ValueError(
                f"expected globals (B, 2, 2, ...) and locals (B, 2, {(n_student - n_teacher) // 2}, ...), "
                f"got {tuple(globals_.shape)} and {tuple(locals_.shape)}"
            )
        g, l_ = pair_views(globals_, locals_)
        cls = [student(g)[:, 0]]
        if l_.shape[0]:
            cls.append(student(l_)[:, 0])
        student_out = self.head(torch.cat(cls)).unflatten(0, (n_student, b))
        with torch.no_grad():
            teacher_out = self.teacher_head(teacher(g)[:, 0]).unflatten(0, (n_teacher, b))
        loss = self.loss(student_out, teacher_out, self.pairs, step)
        self.loss.update_center(teacher_out)
        return loss

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.head, self.teacher_head)]

    def cancel_last_layer_grads(self) -> None:
        """Drop the gradients of the student head's last layer (DINO freezes it for the first steps)."""
        for p in self.head.last_layer_params():
            p.grad = None


def build_encoder_pair(cfg: Config) -> tuple[VisionTransformer, VisionTransformer]:
    """Student encoder (with ``model.drop_path_rate``) and its EMA teacher: an exact frozen copy without drop-path."""
    student = build_vit(cfg.model.name, **cfg.model.overrides())
    teacher = build_vit(cfg.model.name, **{**cfg.model.overrides(), "drop_path_rate": 0.0})
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    return student, teacher


def pair_dataset(cfg: Config) -> PairDataset:
    """Frame pairs with motion, global and local crops from ``cfg.data`` (for DINO and Midway)."""
    from motionrep.data.datasets import PairDataset
    from motionrep.data.sampling import PairSampler
    from motionrep.data.views import PairViewsConfig

    d = cfg.data
    views = PairViewsConfig(
        motion_size=d.motion_size,
        motion_scale=tuple(d.motion_scale),
        init_scale=tuple(d.init_scale),
        global_size=d.global_size,
        global_scale=tuple(d.global_scale),
        local_size=d.local_size,
        local_scale=tuple(d.local_scale),
        n_local=d.n_local,
        photometric=d.photometric,
    )
    sampler = PairSampler(gap=tuple(d.gap), repeats=d.repeats)
    return PairDataset(video_catalog(d), sampler, views, seed=cfg.train.seed)


@register_method("dino")
class DINO(Method):
    """DINO baseline on frame pairs of a video dataset (``latent_dynamics: false`` Midway)."""

    Config = DINOConfig

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        self.encoder, self.teacher_encoder = build_encoder_pair(cfg)
        self.dino = MultiCropDINO(self.encoder.embed_dim, cfg.method, cfg.data.n_local)

    @classmethod
    def build_dataset(cls, cfg: Config) -> Dataset:
        return pair_dataset(cfg)

    def training_step(self, batch: PairBatch, step: int) -> dict[str, Tensor]:
        loss = self.dino(self.encoder, self.teacher_encoder, batch.globals, batch.locals, step)
        return {"loss": loss, "dino": loss.detach()}

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.encoder, self.teacher_encoder), *self.dino.ema_pairs()]

    def on_after_backward(self, step: int) -> None:
        if step < self.cfg.optim.freeze_last_layer_steps:
            self.dino.cancel_last_layer_grads()
