"""Projection heads: the DINO head and a plain MLP projector.

:class:`DINOHead` has the parameter names of the official DINO release (``mlp.0/2/4``, ``last_layer.weight_g``,
``last_layer.weight_v``), so its checkpoints load after a prefix strip.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from motionrep.models.blocks import init_weights


def _mlp(dims: Sequence[int], act: Callable[[], nn.Module]) -> nn.Sequential:
    """``Linear(dims[0], dims[1]), act, ..., Linear(dims[-2], dims[-1])``: no activation after the last layer."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        if i:
            layers.append(act())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight normalisation per output row: ``W = g * v / ||v||``.

    Stores ``weight_g`` ``(out, 1)`` and ``weight_v`` ``(out, in)`` under the names of the legacy
    ``torch.nn.utils.weight_norm`` used by the official DINO checkpoints.
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))  # nn.Linear's default, as in DINO
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1))

    @property
    def weight(self) -> Tensor:
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=1, keepdim=True))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """DINO projection head: MLP with GELU, L2-normalised bottleneck, weight-normalised bias-free last layer.

    ``layers`` counts the linear layers before the bottleneck (``in -> hidden -> ... -> bottleneck``). With
    ``norm_last_layer=True`` the weight-norm gain is fixed at 1 (not trainable); the official DINO ViT-S recipe and
    Midway use ``False``. Returns the logits ``(..., out_dim)``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int = 2048,
        bottleneck: int = 256,
        layers: int = 3,
        norm_last_layer: bool = True,
    ):
        super().__init__()
        if layers < 1:
            raise ValueError(f"DINOHead needs layers >= 1, got {layers}")
        self.mlp = _mlp([in_dim, *[hidden] * (layers - 1), bottleneck], nn.GELU)
        self.mlp.apply(init_weights)
        self.last_layer = WeightNormLinear(bottleneck, out_dim)
        self.last_layer.weight_g.requires_grad_(not norm_last_layer)

    def last_layer_params(self) -> list[nn.Parameter]:
        """The last layer's parameters, whose gradients the engine cancels during the first epoch."""
        return list(self.last_layer.parameters())

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


class MLPProjector(nn.Module):
    """MLP ``in_dim -> dims[0] -> ... -> dims[-1]`` with ``act`` between layers, optionally L2-normalised output.

    MoSiC's head is ``MLPProjector(d, [1024, 1024, 512, 256])``.
    """

    def __init__(
        self,
        in_dim: int,
        dims: Sequence[int],
        act: Callable[[], nn.Module] = nn.GELU,
        normalize: bool = True,
    ):
        super().__init__()
        if not dims:
            raise ValueError("MLPProjector needs at least one output width in dims")
        self.normalize = normalize
        self.mlp = _mlp([in_dim, *dims], act)
        self.mlp.apply(init_weights)

    def forward(self, x: Tensor) -> Tensor:
        x = self.mlp(x)
        return F.normalize(x, dim=-1) if self.normalize else x
