"""The ``Method`` contract and the method registry.

A method is an ``nn.Module`` that owns its config dataclass (``Config``), builds the data it needs
(``build_dataset``), computes its losses (``training_step``), names its EMA (student, teacher) pairs and its
optimiser parameter groups, and exposes ``encoder`` for evaluation and export. The training engine only talks to
this contract; it never names a method. Register a method with ``@register_method("name")``.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from motionrep.config import ConfigError, MethodConfig

if TYPE_CHECKING:
    from torch.utils.data import Dataset

    from motionrep.config import Config, DataConfig
    from motionrep.data.catalog import Catalog


class Method(nn.Module):
    """Base class of every pre-training method.

    Subclasses set ``Config`` (a :class:`MethodConfig` dataclass) and implement ``training_step``,
    ``build_dataset`` and, if they have EMA teachers, ``ema_pairs``; they assign the student encoder to
    ``self.encoder``.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    encoder: nn.Module

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg

    def training_step(self, batch: Any, step: int) -> dict[str, torch.Tensor]:
        """Losses of one (micro-)batch: ``"loss"`` (what is minimised) and each loss term, as scalar tensors."""
        raise NotImplementedError

    def forward(self, batch: Any, step: int) -> dict[str, torch.Tensor]:
        return self.training_step(batch, step)

    @classmethod
    def build_dataset(cls, cfg: Config) -> Dataset:
        """The training dataset this method needs, from ``cfg.data``."""
        raise NotImplementedError

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(student, teacher) modules averaged after every optimiser step; none by default."""
        return []

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimiser groups: dicts with ``params`` plus ``lr_scale`` / ``apply_wd`` (see :mod:`motionrep.train.optim`).

        Default: every trainable parameter at the base lr, weight decay on >= 2-D weights only.
        """
        from motionrep.train.optim import decay_groups

        return decay_groups(self.named_parameters())

    def on_after_backward(self, step: int) -> None:
        """Called after gradients are complete (unscaled and clipped), before the optimiser step."""

    def on_before_step(self, step: int) -> None:
        """Called right before ``optimizer.step()``, after ``on_after_backward``."""

    def module_sizes(self) -> dict[str, int]:
        """Parameter count of each top-level submodule (teachers included), for ``pretrain --dry-run``."""
        return {name: sum(p.numel() for p in m.parameters()) for name, m in self.named_children()}


def video_catalog(data: DataConfig) -> Catalog:
    """The training videos of ``cfg.data``: the in-memory synthetic world, or a dataset layout on disk.

    Raises ``ValueError`` (a missing or empty dataset, an unknown source) with a message naming the path.
    """
    import inspect

    from motionrep.data import catalog

    if data.source == "synthetic":
        from motionrep.data.synth import SynthWorld, synth_preset

        world = SynthWorld(synth_preset(data.synth_preset), data.split, data.synth_seed, data.synth_videos)
        return catalog.synthetic(world)
    if data.source not in catalog.CATALOGS:
        raise ConfigError(f"unknown data.source {data.source!r}; choose synthetic or one of {sorted(catalog.CATALOGS)}")
    if not data.root:
        raise ConfigError(f"data.source={data.source} needs data.root (the dataset folder)")
    takes_split = "split" in inspect.signature(catalog.CATALOGS[data.source]).parameters
    return catalog.build_catalog(data.source, data.root, **({"split": data.split} if takes_split else {}))


_REGISTRY: dict[str, type[Method]] = {}


def register_method(name: str):
    """Class decorator: make a :class:`Method` subclass available as ``method.name: <name>``."""

    def wrap(cls: type[Method]) -> type[Method]:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register_method({name!r}) needs a Method subclass, got {cls!r}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        if cls.Config.__dataclass_fields__["name"].default != name:
            raise TypeError(f"{cls.__qualname__}.Config.name must default to {name!r}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _import_builtin_methods() -> None:
    """Import every module of ``motionrep.methods`` so that their ``@register_method`` decorators run."""
    import motionrep.methods as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name != "base":
            importlib.import_module(f"{pkg.__name__}.{info.name}")


def available_methods() -> list[str]:
    _import_builtin_methods()
    return sorted(_REGISTRY)


def get_method(name: str) -> type[Method]:
    """The registered method class called ``name``; :class:`ConfigError` listing the known names otherwise."""
    if (
        name not in _REGISTRY
        and name.isidentifier()
        and importlib.util.find_spec(f"motionrep.methods.{name}") is not None
    ):
        importlib.import_module(f"motionrep.methods.{name}")
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r}; registered methods: {', '.join(available_methods())}")
    return _REGISTRY[name]
