"""Midway Network latent dynamics (``docs/methods/midway.md``): the midway (inverse-dynamics) path, the top-down
backward cross-attention layers and the gated forward predictor, arranged in the top-down hierarchy of the paper's
Algorithm 1, with the dense ``2 - 2 cos`` loss against the teacher encoder features of the target frame.

Objective levels are indexed ``i = 0..n-1`` in ascending order (``levels[i]``); the top level ``levels[-1]`` is only
an input. Module lists are indexed the same way, which is also the official checkpoint's suffix order
(``_0`` is the lowest objective level): see :data:`OFFICIAL_KEY_MAP`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from motionrep.models.blocks import Block, CrossBlock, Mlp, init_weights

REFINE_SOURCES = ("prediction", "features")
MOTION_AGGREGATIONS = ("add", "replace")
REFINE_TARGETS = ("teacher_backward", "teacher_raw")
GATE_SOURCES = ("previous_block", "same_block")
MOTION_INITS = ("learnable", "zeros")
LEVEL_REDUCTIONS = ("sum", "mean")


@dataclass
class MidwayDynamicsConfig:
    """The ``midway`` section: every switch of the method (defaults = the paper's ViT-S reference configuration).

    ``refinement`` is the Table 3 composite: ``true`` means (``prediction``, ``add``), ``false`` means
    (``features``, ``replace``); ``null`` leaves ``refine_source`` / ``motion_aggregation`` as given.
    """

    latent_dynamics: bool = True
    levels: list[int] = field(default_factory=lambda: [3, 6, 9, 12])
    level_weights: list[float] | None = None
    level_reduction: str = "sum"
    backward: bool = True
    backward_depth: int = 1
    backward_heads: int = 6
    refinement: bool | None = None
    refine_source: str = "prediction"
    motion_aggregation: str = "add"
    refine_target: str = "teacher_backward"
    gating: bool = True
    gate_source: str = "previous_block"
    gate_bias: float = 4.0
    motion_tokens: int = 10
    motion_dim: int = 192
    motion_init: str = "learnable"
    midway_depth: int = 4
    midway_heads: int = 3
    forward_depth: int = 4
    forward_heads: int = 6
    bidirectional: bool = True
    use_cls_token: bool = True
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the offending key for any inconsistent setting."""
        choices = {
            "level_reduction": LEVEL_REDUCTIONS,
            "refine_source": REFINE_SOURCES,
            "motion_aggregation": MOTION_AGGREGATIONS,
            "refine_target": REFINE_TARGETS,
            "gate_source": GATE_SOURCES,
            "motion_init": MOTION_INITS,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"midway.{key}={getattr(self, key)!r}; expected one of {list(allowed)}")
        levels = list(self.levels)
        if len(levels) < 2 or levels != sorted(set(levels)) or levels[0] < 1:
            raise ValueError(f"midway.levels={levels}: need >= 2 strictly increasing 1-indexed blocks (top last)")
        if self.level_weights is not None and len(self.level_weights) != len(levels) - 1:
            raise ValueError(
                f"midway.level_weights has {len(self.level_weights)} entries; expected one per objective level "
                f"{levels[:-1]}"
            )
        for key in ("backward_depth", "motion_tokens", "midway_depth", "forward_depth"):
            if getattr(self, key) < 1:
                raise ValueError(f"midway.{key} must be >= 1, got {getattr(self, key)}")
        if self.refinement is True and (self.refine_source, self.motion_aggregation) != ("prediction", "add"):
            raise ValueError("midway.refinement=true conflicts with refine_source/motion_aggregation; set only one")

    @property
    def objective_levels(self) -> list[int]:
        return list(self.levels[:-1])

    @property
    def weights(self) -> list[float]:
        return list(self.level_weights) if self.level_weights is not None else [1.0] * len(self.objective_levels)

    @property
    def source_mode(self) -> str:
        return {True: "prediction", False: "features"}.get(self.refinement, self.refine_source)

    @property
    def aggregation(self) -> str:
        return {True: "add", False: "replace"}.get(self.refinement, self.motion_aggregation)


# Official checkpoint (``motion_loss`` state dict, after stripping ``module.``) prefix -> this module's prefix.
# ``{i}`` is the objective-level index, identical in both layouts (``_0`` = lowest objective level).
OFFICIAL_KEY_MAP: dict[str, str] = {
    "pos_embed": "pos_embed",
    "motion_tokens": "motion_tokens",
    "student_embed.": "student_embed.",
    "teacher_embed.": "teacher_embed.",
    "motion_proj.": "motion_proj.",
    "motion_blocks_{i}.": "midway_blocks.{i}.",
    "forward_predictor_{i}.": "forward_predictors.{i}.blocks.",
    "gating_mlps_{i}.": "forward_predictors.{i}.gates.",
    "student_feature_blocks_{i}.": "student_backward.{i}.blocks.",
    "teacher_feature_blocks_{i}.": "teacher_backward.{i}.blocks.",
}


def official_key_to_local(key: str) -> str:
    """Translate one official ``motion_loss`` key (with or without ``module.``) to this module's key."""
    key = key.removeprefix("module.")
    for src, dst in OFFICIAL_KEY_MAP.items():
        pattern = "^" + re.escape(src).replace(re.escape("{i}"), r"(\d+)")
        match = re.match(pattern, key)
        if match:
            prefix = dst.format(i=match.group(1)) if match.groups() else dst
            return prefix + key[match.end() :]
    raise KeyError(f"no mapping for official Midway key {key!r}")


def cls_and_patches(tokens: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """``[CLS, registers, patches]`` -> ``[CLS, patches]``: the dynamics never see register tokens."""
    return torch.cat([tokens[:, :1], tokens[:, num_prefix_tokens:]], dim=1) if num_prefix_tokens > 1 else tokens


def dense_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-token ``||a/|a| - b/|b|||^2 = 2 - 2 cos(a, b)`` over the channel axis: (..., C) -> (...)."""
    return 2.0 - 2.0 * F.cosine_similarity(pred, target, dim=-1, eps=1e-6)


def mean_token_cosine(tokens: torch.Tensor) -> torch.Tensor:
    """Mean cosine between distinct tokens of each sequence ``(B, n, C)``, averaged over the batch: a collapse
    gauge (1 = every token alike). Computed from the sum of unit vectors, without the ``n x n`` matrix."""
    n = tokens.shape[1]
    if n < 2:
        raise ValueError(f"need at least 2 tokens per sequence, got {n}")
    total = F.normalize(tokens.float(), dim=-1, eps=1e-6).sum(1)
    return ((total.square().sum(-1) - n) / (n * (n - 1))).mean()


class GateMLP(nn.Module):
    """Per-token, per-channel gate ``sigmoid(fc2(GELU(fc1(LN(x)))) + bias)`` (official ``gating_mlps``)."""

    def __init__(self, dim: int, bias: float):
        super().__init__()
        self.norm_layer = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim)
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(self.norm_layer(x)) + self.bias)


class GatedPredictor(nn.Module):
    """Forward dynamics of one level: pre-LN blocks over ``concat(motion, v)``; blocks 2..depth gate the attention
    residual of the ``v`` tokens (motion tokens use gate 1). The gate of block ``b`` is computed from the input of
    block ``b - 1`` (``previous_block``, released code) or of block ``b`` (``same_block``, paper)."""

    def __init__(
        self, dim: int, depth: int, heads: int, mlp_ratio: float, gating: bool, gate_source: str, gate_bias: float
    ):
        super().__init__()
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias=False) for _ in range(depth))
        self.gates = nn.ModuleList(GateMLP(dim, gate_bias) for _ in range(depth - 1)) if gating else nn.ModuleList()
        self.gate_source = gate_source

    def forward(self, motion: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``motion`` (B, T, D), ``v`` (B, N, D) -> prediction (B, N, D) and the gates applied (each (B, N, D))."""
        t = motion.shape[1]
        x = torch.cat([motion, v], dim=1)
        previous, gates = x, []
        for b, block in enumerate(self.blocks):
            gate = None
            if b > 0 and len(self.gates):
                source = previous if self.gate_source == "previous_block" else x
                g = self.gates[b - 1](source[:, t:])
                gates.append(g)
                gate = torch.cat([g.new_ones(g.shape[0], t, g.shape[2]), g], dim=1)
            previous = x
            x = block(x, gate)
        return x[:, t:], gates


class BackwardStack(nn.Module):
    """Top-down refinement of one level: ``backward_depth`` CrossBlocks over the lateral tokens, each attending to
    the backward features of the level above."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.blocks = nn.ModuleList(CrossBlock(dim, heads, mlp_ratio, qkv_bias=False) for _ in range(depth))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, context)
        return x


@dataclass
class LevelState:
    """What the hierarchy computed at one objective level (one direction)."""

    level: int
    motion: torch.Tensor  # (B, T, d_m) latents used by this level's predictor
    source: torch.Tensor  # (B, N, D) student features z_t^l fed to the backward block
    context: torch.Tensor  # (B, N, D) student backward features of the level above (v_t^{l+1})
    prediction: torch.Tensor  # (B, N, D)
    gates: list[torch.Tensor]
    midway_target: torch.Tensor  # (B, N, d_m) target-side tokens output by the midway transformer


@dataclass
class DynamicsOutput:
    loss: torch.Tensor
    level_losses: dict[int, torch.Tensor]
    copy_losses: dict[int, torch.Tensor]
    gate_stats: dict[str, torch.Tensor]
    states: list[LevelState]


class MidwayDynamics(nn.Module):
    """All dynamics modules of Midway Network for an encoder of width ``embed_dim`` whose training-resolution token
    grid is ``grid_size`` (h, w). Inputs are per-level token sequences ``(B, 1 + h*w, D)`` (CLS first)."""

    def __init__(self, config: MidwayDynamicsConfig, embed_dim: int, grid_size: tuple[int, int]):
        super().__init__()
        config.validate()
        self.config = config
        self.grid_size = tuple(grid_size)
        n_levels = len(config.objective_levels)
        d, dm, r = embed_dim, config.motion_dim, config.mlp_ratio
        self.num_tokens = int(config.use_cls_token) + self.grid_size[0] * self.grid_size[1]

        self.pos_embed = nn.Parameter(torch.zeros(1, 2 * self.num_tokens, dm))
        tokens = torch.zeros(1, config.motion_tokens, dm)
        if config.motion_init == "learnable":
            self.motion_tokens = nn.Parameter(tokens)
        else:
            self.register_buffer("motion_tokens", tokens, persistent=False)
        self.student_embed = nn.Linear(d, dm)
        self.teacher_embed = nn.Linear(d, dm)
        self.motion_proj = nn.Linear(dm, d)
        self.midway_blocks = nn.ModuleList(
            nn.ModuleList(Block(dm, config.midway_heads, r, qkv_bias=False) for _ in range(config.midway_depth))
            for _ in range(n_levels)
        )
        self.forward_predictors = nn.ModuleList(
            GatedPredictor(
                d, config.forward_depth, config.forward_heads, r, config.gating, config.gate_source, config.gate_bias
            )
            for _ in range(n_levels)
        )
        if config.backward:
            make = lambda: BackwardStack(d, config.backward_depth, config.backward_heads, r)  # noqa: E731
            self.student_backward = nn.ModuleList(make() for _ in range(n_levels))
            if self.uses_teacher_backward:
                # One per level as in the official checkpoint; the lowest one is only read by single-image readouts.
                self.teacher_backward = nn.ModuleList(make() for _ in range(n_levels))
        self.apply(init_weights)
        for student, teacher in self.ema_pairs():
            teacher.load_state_dict(student.state_dict())
            teacher.requires_grad_(False)

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(student, EMA teacher) module pairs owned by the dynamics: the embedding and the backward stacks."""
        pairs = [(self.student_embed, self.teacher_embed)]
        if self.uses_teacher_backward:
            pairs.append((self.student_backward, self.teacher_backward))
        return pairs

    @property
    def uses_teacher_backward(self) -> bool:
        """Lower midway steps read the teacher's backward features, so an EMA backward stack exists."""
        return self.config.backward and self.config.refine_target == "teacher_backward"

    def num_student_parameters(self) -> int:
        """Trainable parameters (the paper's "dynamics parameters"; EMA teacher copies excluded)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ------------------------------------------------------------------ pieces
    def midway_pos_embed(self, n: int, grid_hw: tuple[int, int] | None) -> torch.Tensor:
        """Position embedding (1, 2n, d_m) for ``n`` tokens per side: each half's patch rows are resized
        bicubically to ``grid_hw`` (square when not given), the CLS row is kept."""
        if n == self.num_tokens:
            return self.pos_embed
        cls = int(self.config.use_cls_token)
        if grid_hw is None:
            side = math.isqrt(n - cls)
            if side * side != n - cls:
                raise ValueError(f"{n} tokens per frame are not a square grid; pass grid_hw")
            grid_hw = (side, side)
        if grid_hw[0] * grid_hw[1] != n - cls:
            raise ValueError(f"grid {grid_hw} does not match {n} tokens per frame")
        h0, w0 = self.grid_size
        halves = []
        for half in self.pos_embed.split(self.num_tokens, dim=1):
            patches = half[:, cls:].reshape(1, h0, w0, -1).permute(0, 3, 1, 2)
            patches = F.interpolate(patches, size=tuple(grid_hw), mode="bicubic", align_corners=False)
            halves += [half[:, :cls], patches.flatten(2).transpose(1, 2)]
        return torch.cat(halves, dim=1)

    def infer_motion(
        self,
        i: int,
        motion: torch.Tensor,
        source: torch.Tensor,
        target: torch.Tensor,
        pos: torch.Tensor,
        detach_target: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Midway transformer of level index ``i`` -> (new motion tokens (B, T, d_m), target-side tokens).

        ``detach_target=False`` lets gradients reach the target features (flow finetuning with one shared encoder).
        """
        n = source.shape[1]
        with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_target):
            target_tokens = self.teacher_embed(target.detach() if detach_target else target)
        x = torch.cat([motion, self.student_embed(source) + pos[:, :n], target_tokens + pos[:, n:]], dim=1)
        for block in self.midway_blocks[i]:
            x = block(x)
        t = motion.shape[1]
        return x[:, :t], x[:, t + n :]

    def refine(self, i: int, source: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Student backward features v_t^l (identity without backward layers)."""
        return self.student_backward[i](source, context) if self.config.backward else source

    def predict(
        self, i: int, source: torch.Tensor, context: torch.Tensor, motion: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Forward prediction of level index ``i``: backward_i(z_t^l, v^{l+1}) then predictor_i with fixed ``m``."""
        return self.forward_predictors[i](self.motion_proj(motion), self.refine(i, source, context))

    # ------------------------------------------------------------------ hierarchy
    def forward(
        self,
        source: Sequence[torch.Tensor],
        target: Sequence[torch.Tensor],
        grid_hw: tuple[int, int] | None = None,
        detach_target: bool = True,
    ) -> DynamicsOutput:
        """One direction: ``source[k]`` are student features and ``target[k]`` teacher features (no gradient) at
        ``levels[k]`` (ascending, top last), each (B, 1 + h*w, D). Returns the weighted dense loss and diagnostics.

        ``detach_target=False`` (flow finetuning, not pretraining) keeps the target side in the autograd graph."""
        cfg = self.config
        if len(source) != len(cfg.levels) or len(target) != len(cfg.levels):
            raise ValueError(f"expected features at {len(cfg.levels)} levels {cfg.levels}, got {len(source)}")
        if not cfg.use_cls_token:
            source, target = [z[:, 1:] for z in source], [z[:, 1:] for z in target]
        if detach_target:
            target = [z.detach() for z in target]
        b, n, _ = source[-1].shape
        pos = self.midway_pos_embed(n, grid_hw)
        motion = self.motion_tokens.expand(b, -1, -1)
        src_in, tgt_in = source[-1], target[-1]
        ctx_s, ctx_t = source[-1], target[-1]
        states: list[LevelState] = []
        n_levels = len(cfg.objective_levels)
        for i in reversed(range(n_levels)):
            new, midway_target = self.infer_motion(i, motion, src_in, tgt_in, pos, detach_target)
            motion = new + motion if (i < n_levels - 1 and cfg.aggregation == "add") else new
            v_s = self.refine(i, source[i], ctx_s)
            pred, gates = self.forward_predictors[i](self.motion_proj(motion), v_s)
            states.append(LevelState(cfg.levels[i], motion, source[i], ctx_s, pred, gates, midway_target))
            if i == 0:
                break
            if self.uses_teacher_backward:
                with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_target):
                    ctx_t = self.teacher_backward[i](target[i], ctx_t)
            src_in = pred if cfg.source_mode == "prediction" else v_s
            tgt_in = ctx_t if self.uses_teacher_backward else target[i]
            ctx_s = v_s
        return self._losses(states[::-1], source, target)

    def _losses(
        self, states: list[LevelState], source: Sequence[torch.Tensor], target: Sequence[torch.Tensor]
    ) -> DynamicsOutput:
        cfg = self.config
        level_losses, copy_losses, gate_stats = {}, {}, {}
        total = source[0].new_zeros(())
        for i, (state, weight) in enumerate(zip(states, cfg.weights, strict=True)):
            loss = dense_loss(state.prediction, target[i]).mean()
            level_losses[state.level] = loss
            total = total + weight * loss
            with torch.no_grad():
                copy_losses[state.level] = dense_loss(source[i], target[i]).mean()
                for b, g in enumerate(state.gates, start=2):
                    gate_stats[f"gate_mean/l{state.level}/b{b}"] = g.mean()
                    gate_stats[f"gate_var/l{state.level}/b{b}"] = g.var()
        if cfg.level_reduction == "mean":
            total = total / len(states)
        return DynamicsOutput(total, level_losses, copy_losses, gate_stats, states)

    def pair_loss(
        self,
        student_x: Sequence[torch.Tensor],
        student_y: Sequence[torch.Tensor],
        teacher_x: Sequence[torch.Tensor],
        teacher_y: Sequence[torch.Tensor],
        grid_hw: tuple[int, int] | None = None,
    ) -> DynamicsOutput:
        """Dense loss on a motion-crop pair (x = frame t, y = frame t+gap). Bidirectional (default): x -> y and
        y -> x are stacked along the batch, so every loss is the mean of the two one-directional losses."""
        if not self.config.bidirectional:
            return self(student_x, teacher_y, grid_hw)
        source = [torch.cat([a, b]) for a, b in zip(student_x, student_y, strict=True)]
        target = [torch.cat([a, b]) for a, b in zip(teacher_y, teacher_x, strict=True)]
        return self(source, target, grid_hw)
