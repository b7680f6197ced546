"""Midway Network (method ``midway``, ``docs/methods/midway.md``): the two-frame multi-crop DINO term of
:mod:`motionrep.methods.dino` plus the latent-dynamics dense loss of :class:`~motionrep.models.dynamics.MidwayDynamics`
on the motion crops of each :class:`~motionrep.data.batch.PairBatch`.

Student encoder taps of both motion crops are the sources and EMA-teacher taps the targets (both directions by
default). EMA pairs: encoder, DINO head, ``teacher_embed`` and the teacher backward blocks (midway.md §3.7).
``midway.latent_dynamics: false`` builds no dynamics and is exactly the ``dino`` method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from motionrep.config import ConfigError
from motionrep.methods.base import Method, register_method
from motionrep.methods.dino import DINOConfig, MultiCropDINO, build_encoder_pair, pair_dataset
from motionrep.models.dynamics import MidwayDynamics, MidwayDynamicsConfig, cls_and_patches, mean_token_cosine

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from motionrep.config import Config
    from motionrep.data.batch import PairBatch


@dataclass
class MidwayConfig(DINOConfig):
    """DINO-term keys (inherited) plus ``dino_weight`` and the ``midway`` section of every dynamics switch."""

    name: str = "midway"
    dino_weight: float = 1.0
    midway: MidwayDynamicsConfig = field(default_factory=MidwayDynamicsConfig)


@register_method("midway")
class Midway(Method):
    """Midway Network: DINO invariance term + dense forward-prediction loss through latent dynamics."""

    Config = MidwayConfig

    def __init__(self, cfg: Config):
        super().__init__(cfg)
        mcfg: MidwayConfig = cfg.method
        self.encoder, self.teacher_encoder = build_encoder_pair(cfg)
        self.dino = MultiCropDINO(self.encoder.embed_dim, mcfg, cfg.data.n_local)
        if mcfg.midway.latent_dynamics:
            if max(mcfg.midway.levels) > self.encoder.depth:
                raise ConfigError(
                    f"method.midway.levels {mcfg.midway.levels} exceed the encoder depth {self.encoder.depth}"
                )
            grid = self.encoder.grid_size((cfg.data.motion_size, cfg.data.motion_size))
            self.dynamics = MidwayDynamics(mcfg.midway, self.encoder.embed_dim, grid)

    @classmethod
    def build_dataset(cls, cfg: Config) -> Dataset:
        return pair_dataset(cfg)

    def taps(self, encoder: nn.Module, images: Tensor) -> list[Tensor]:
        """Tokens ``[CLS, patches]`` of ``images`` at every Midway level (register tokens dropped)."""
        levels = self.cfg.method.midway.levels
        return [cls_and_patches(z, encoder.num_prefix_tokens) for z in encoder(images, taps=levels)]

    def dynamics_loss(self, motion: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Dense loss of motion crops ``(B, 2, 3, S, S)`` and its logged diagnostics."""
        x, y = motion[:, 0], motion[:, 1]
        b = x.shape[0]
        both = self.cfg.method.midway.bidirectional
        student = self.taps(self.encoder, torch.cat([x, y]) if both else x)
        with torch.no_grad():
            teacher = self.taps(self.teacher_encoder, torch.cat([x, y]) if both else y)
        if both:
            out = self.dynamics.pair_loss(
                [z[:b] for z in student], [z[b:] for z in student], [z[:b] for z in teacher], [z[b:] for z in teacher]
            )
        else:
            out = self.dynamics(student, teacher)
        logs = {f"dyn_l{lv}": v.detach() for lv, v in out.level_losses.items()}
        logs |= {f"copy_l{lv}": v for lv, v in out.copy_losses.items()}
        levels = self.cfg.method.midway.levels
        logs |= {f"token_cos_l{lv}": mean_token_cosine(z[:, 1:]) for lv, z in zip(levels, teacher, strict=True)}
        return out.loss, logs | out.gate_stats

    def training_step(self, batch: PairBatch, step: int) -> dict[str, Tensor]:
        dino = self.dino(self.encoder, self.teacher_encoder, batch.globals, batch.locals, step)
        loss = self.cfg.method.dino_weight * dino
        if not hasattr(self, "dynamics"):
            return {"loss": loss, "dino": dino.detach()}
        dyn, logs = self.dynamics_loss(batch.motion)
        return {"loss": loss + dyn, "dino": dino.detach(), "dynamics": dyn.detach(), **logs}

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        pairs = [(self.encoder, self.teacher_encoder), *self.dino.ema_pairs()]
        return pairs + (self.dynamics.ema_pairs() if hasattr(self, "dynamics") else [])

    def module_sizes(self) -> dict[str, int]:
        """Parameters per top-level module; the dynamics split into trainable and EMA-teacher parts."""
        sizes = super().module_sizes()
        if "dynamics" in sizes:
            sizes["dynamics"] = self.dynamics.num_student_parameters()
            sizes["dynamics_teacher"] = sum(p.numel() for _, t in self.dynamics.ema_pairs() for p in t.parameters())
        return sizes

    def on_after_backward(self, step: int) -> None:
        if step < self.cfg.optim.freeze_last_layer_steps:
            self.dino.cancel_last_layer_grads()
