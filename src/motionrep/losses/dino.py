"""DINO self-distillation loss with centring and sharpening, and the (teacher view, student view) pair masks.

For teacher view ``i`` and student view ``j`` the term is the batch mean of
``H(softmax((t_i - c) / T_t), log_softmax(s_j / T_s))``; the loss is the mean over the counted pairs. The centre
``c`` follows an EMA of the teacher outputs' batch mean, reduced over all ranks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from motionrep.train import dist


def frame_pair_view_mask(*, n_global_per_frame: int = 2, n_local_per_frame: int, frames: int = 2) -> Tensor:
    """Which (teacher view, student view) pairs count in Midway's two-frame multi-crop, as a ``(V_t, V_s)`` bool mask.

    Views are ordered ``[globals of frame 0, globals of frame 1, ..., locals of frame 0, locals of frame 1, ...]``
    (``V_t = frames * n_global_per_frame`` teacher views, ``V_s = V_t + frames * n_local_per_frame`` student views).
    Global crop ``k`` shares its box across frames, so a pair is skipped when the student view is global crop ``k``
    of any frame and the teacher view is global crop ``k``: the identical view, and the same box in another frame.
    With 2 frames and 2 global crops that leaves ``4 * (V_s - 2)`` terms (72 with 8 locals per frame, 40 with 4).
    ``frames=1`` is the standard single-image DINO mask (only identical views skipped).
    """
    if n_global_per_frame < 1 or n_local_per_frame < 0 or frames < 1:
        raise ValueError("need n_global_per_frame >= 1, n_local_per_frame >= 0 and frames >= 1")
    n_teacher = frames * n_global_per_frame
    crop_index = torch.arange(n_teacher) % n_global_per_frame
    same_box = crop_index[:, None] == crop_index[None, :]
    return torch.cat([~same_box, torch.ones(n_teacher, frames * n_local_per_frame, dtype=torch.bool)], dim=1)


def single_image_view_mask(n_global: int = 2, n_local: int = 0) -> Tensor:
    """Standard DINO mask ``(n_global, n_global + n_local)``: every pair except a global view with itself."""
    return frame_pair_view_mask(n_global_per_frame=n_global, n_local_per_frame=n_local, frames=1)


class DINOLoss(nn.Module):
    """DINO cross-entropy between sharpened, centred teacher outputs and student outputs over selected view pairs.

    The teacher temperature rises linearly from ``warmup_teacher_temp`` (if given) to ``teacher_temp`` over
    ``warmup_steps`` steps and stays there. ``center`` (``(1, out_dim)``, a persistent buffer) is updated by
    :meth:`update_center`, to be called once per step after the loss.
    """

    def __init__(
        self,
        out_dim: int,
        teacher_temp: float = 0.04,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        warmup_teacher_temp: float | None = None,
        warmup_steps: int = 0,
    ):
        super().__init__()
        if min(teacher_temp, student_temp) <= 0 or (warmup_teacher_temp is not None and warmup_teacher_temp <= 0):
            raise ValueError("temperatures must be positive")
        if not 0.0 <= center_momentum <= 1.0 or warmup_steps < 0:
            raise ValueError("need 0 <= center_momentum <= 1 and warmup_steps >= 0")
        self.out_dim = out_dim
        self.teacher_temp = teacher_temp
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.warmup_teacher_temp = warmup_teacher_temp
        self.warmup_steps = warmup_steps
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_temperature(self, step: int) -> float:
        """The teacher temperature at optimiser step ``step`` (0-based)."""
        if self.warmup_teacher_temp is None or step >= self.warmup_steps:
            return self.teacher_temp
        return self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * step / self.warmup_steps

    def _stack(self, out: Tensor | Sequence[Tensor], name: str) -> Tensor:
        out = torch.stack(list(out)) if not isinstance(out, Tensor) else out
        if out.dim() != 3 or out.shape[-1] != self.out_dim:
            raise ValueError(f"{name} must be (views, B, {self.out_dim}), got {tuple(out.shape)}")
        return out.float()

    def forward(
        self, student_out: Tensor | Sequence[Tensor], teacher_out: Tensor, pairs: Tensor, step: int = 0
    ) -> Tensor:
        """Mean over the pairs ``pairs[i, j]`` of the batch-mean CE between teacher view ``i`` and student view ``j``.

        ``student_out``: ``(V_s, B, K)`` or a list of ``V_s`` tensors ``(B, K)``; ``teacher_out``: ``(V_t, B, K)``
        (no gradient flows into it); ``pairs``: bool ``(V_t, V_s)``, e.g. from :func:`frame_pair_view_mask`.
        """
        student = self._stack(student_out, "student_out")
        teacher = self._stack(teacher_out, "teacher_out")
        if student.shape[1] != teacher.shape[1]:
            raise ValueError(f"student batch {student.shape[1]} differs from teacher batch {teacher.shape[1]}")
        if pairs.dtype != torch.bool or pairs.shape != (teacher.shape[0], student.shape[0]):
            raise ValueError(f"pairs must be a bool tensor of shape {(teacher.shape[0], student.shape[0])}")
        if not pairs.any():
            raise ValueError("pairs selects no (teacher view, student view) pair")
        targets = F.softmax((teacher.detach() - self.center) / self.teacher_temperature(step), dim=-1)
        log_probs = F.log_softmax(student / self.student_temp, dim=-1)
        batch = student.shape[1]
        ce = -(targets.flatten(1) @ log_probs.flatten(1).T) / batch  # (V_t, V_s): batch-mean CE of every pair
        weights = pairs.to(ce.device, ce.dtype)
        return (ce * weights).sum() / weights.sum()

    @torch.no_grad()
    def update_center(self, teacher_out: Tensor | Sequence[Tensor]) -> None:
        """EMA of the centre towards the mean teacher output row over all views, samples and ranks."""
        teacher = self._stack(teacher_out, "teacher_out").flatten(0, 1)
        count = torch.tensor([teacher.shape[0]], dtype=teacher.dtype, device=teacher.device)
        reduced = dist.all_reduce_sum(torch.cat([teacher.sum(0), count]))
        batch_center = reduced[:-1] / reduced[-1]
        self.center.mul_(self.center_momentum).add_(batch_center.unsqueeze(0), alpha=1.0 - self.center_momentum)
