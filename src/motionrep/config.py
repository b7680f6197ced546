"""Run configuration: dataclass schemas (OmegaConf structured configs), YAML presets and dotted overrides.

A run is described by one :class:`Config`. Its ``method`` section is the config dataclass of the method named by
``method.name`` (see :mod:`motionrep.methods`), so each method declares and validates its own keys. Presets live in
``motionrep/configs/<name>.yaml``; ``load_config("dino-synth-tiny", ["train.steps=100"])`` resolves a preset with
overrides, and the ``config.yaml`` written by :func:`save_config` alone reproduces the run.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

PRESET_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A user mistake in a config file or override; the message says what to fix."""


class EMASchedule(str, enum.Enum):
    cosine = "cosine"
    constant = "constant"


@dataclass
class TrainConfig:
    steps: int = 1000  # optimiser steps (used when ``epochs`` is unset)
    epochs: float | None = None  # when set: steps = ceil(epochs * batches per epoch / grad_accum)
    batch_size: int = 16  # GLOBAL samples per optimiser step (over ranks and accumulation)
    grad_accum: int = 1  # micro-batches per optimiser step
    log_every: int = 10
    ckpt_every: int = 500  # periodic checkpoints; ``last.pt`` is also written at the end
    keep_last: int = 3  # periodic checkpoints kept (``last.pt`` always kept)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # fp16 autocast + GradScaler, on CUDA only (ignored on CPU)
    workers: int = 2  # data-loader worker processes per rank
    tensorboard: bool = False  # also write RUN_DIR/tb (needs the tensorboard extra)
    find_unused_parameters: bool = False  # DDP: set when some trainable parameters get no gradient in a step


@dataclass
class OptimConfig:
    lr: float = 5e-4  # peak learning rate
    lr_reference_batch: int | None = None  # when set: peak lr = lr * batch_size / lr_reference_batch
    lr_scale_extra: float = 1.0  # extra factor on the peak lr (Walking Tours recipe: 5)
    min_lr: float = 1e-6
    warmup_steps: int | None = None  # overrides warmup_fraction when set
    warmup_fraction: float = 0.05
    weight_decay: float = 0.04  # cosine from weight_decay to weight_decay_end
    weight_decay_end: float = 0.4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    clip_grad: float = 3.0  # per-parameter gradient-norm clipping; 0 disables
    freeze_last_layer_steps: int = 0  # optimiser steps during which a method's "last layer" gets no gradient


@dataclass
class EMAConfig:
    momentum: float = 0.996  # base momentum
    schedule: EMASchedule = EMASchedule.cosine  # cosine: base -> 1 over the actual optimiser steps


@dataclass
class ModelConfig:
    """Encoder preset of :data:`motionrep.models.vit.VIT_PRESETS` plus keyword overrides (None keeps the preset's)."""

    name: str = "vit-synth-tiny"
    img_size: int | None = None  # native grid of the position embedding; any multiple of the patch is accepted
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    num_register_tokens: int | None = None
    drop_path_rate: float = 0.0  # student encoder only

    def overrides(self) -> dict[str, Any]:
        """Keyword overrides for ``build_vit``: every set field except ``name``."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "name" and v is not None}


@dataclass
class DataConfig:
    """Training videos (``source``/``root``/``split``, or the in-memory synthetic world) and how they are sampled:
    frame-pair gaps, repeats and the crops of ``motionrep.data.views.PairViewsConfig`` (same key names)."""

    source: str = "synthetic"  # synthetic | bdd100k | walking_tours | youtube_vos | davis2017 | kinetics | video_folder
    root: str | None = None  # dataset root on disk (unused for the synthetic world)
    split: str = "train"
    synth_preset: str = "small"  # synthetic world: preset, number of videos (None: the preset's split size), seed
    synth_videos: int | None = None
    synth_seed: int = 0
    gap: list[int] = field(default_factory=lambda: [1, 3])  # frame-pair gap range in frames, inclusive
    repeats: int = 1  # pairs drawn per video visit (R)
    motion_size: int = 64
    motion_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])
    init_scale: list[float] = field(default_factory=lambda: [0.25, 1.0])
    global_size: int = 64
    global_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])
    local_size: int = 32
    local_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])
    n_local: int = 4  # local crops per frame
    photometric: bool = True  # DINO's colour / blur / solarize recipe
    clip_frames: int = 12  # clip methods (MoSiC): frames per clip and step between them
    clip_step: int = 6


@dataclass
class MethodConfig:
    """Base of every method's config dataclass; ``name`` selects the method in the registry."""

    name: str = MISSING


@dataclass
class Config:
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: Any = None  # the chosen method's config dataclass


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _preset_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if not preset.is_file():
        raise ConfigError(f"unknown preset {str(name_or_path)!r}; presets: {', '.join(list_presets())}")
    return preset


def _parse_overrides(overrides: list[str]) -> DictConfig:
    bad = [o for o in overrides if "=" not in o or o.startswith("=")]
    if bad:
        raise ConfigError(f"overrides must look like key=value (e.g. train.steps=100); got {', '.join(bad)}")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse overrides: {e.msg}") from None


def _describe_section(schema: DictConfig, dotted: str) -> str:
    """``Valid keys of 'train': batch_size (int), ...`` for the deepest existing section on the dotted path."""
    parts = [p for p in dotted.split(".") if p]
    node, path = schema, []
    for part in parts[:-1]:
        child = node._get_node(part) if part in node else None
        if not isinstance(child, DictConfig):
            break
        node, path = child, [*path, part]
    where = ".".join(path) or "<top level>"
    obj_type = OmegaConf.get_type(node)
    types = {f.name: f.type for f in dataclasses.fields(obj_type)} if dataclasses.is_dataclass(obj_type) else {}
    keys = ", ".join(f"{k} ({types[k]})" if k in types else k for k in node)
    return f"Valid keys of '{where}': {keys}"


def _config_error(e: OmegaConfBaseException, schema: DictConfig) -> ConfigError:
    key = str(getattr(e, "full_key", "") or "")
    msg = str(getattr(e, "msg", e)).splitlines()[0]
    if isinstance(e, ConfigKeyError):
        head = f"unknown config key '{key}': {msg}"
    elif isinstance(e, MissingMandatoryValue):
        head = f"config key '{key}' must be set"
    elif isinstance(e, ValidationError):
        head = f"wrong type for config key '{key}': {msg}"
    else:
        head = f"invalid config at '{key}': {msg}"
    return ConfigError(f"{head}\n{_describe_section(schema, key)}")


def load_config(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Resolve a preset name or YAML path plus dotted ``key=value`` overrides into a validated :class:`Config`.

    Raises :class:`ConfigError` for an unknown preset, key, method or a wrongly typed value.
    """
    path = _preset_path(name_or_path)
    try:
        raw = OmegaConf.load(path)
    except Exception as e:  # YAML syntax errors come in several exception types
        raise ConfigError(f"cannot read {path}: {e}") from None
    return _resolve(raw, _parse_overrides(list(overrides)), str(path))


def parse_config(text: str) -> Config:
    """A :class:`Config` from YAML text (e.g. the ``config`` entry of a checkpoint)."""
    try:
        raw = OmegaConf.create(text)
    except Exception as e:
        raise ConfigError(f"cannot parse config text: {e}") from None
    return _resolve(raw, OmegaConf.create(), "<config text>")


def _resolve(raw: Any, dots: DictConfig, where: str) -> Config:
    from motionrep.methods import get_method

    if not isinstance(raw, DictConfig):
        raise ConfigError(f"{where} must hold a mapping of config sections")
    name = OmegaConf.select(dots, "method.name") or OmegaConf.select(raw, "method.name")
    if not name:
        raise ConfigError(f"{where}: 'method.name' is not set")
    method_cls = get_method(str(name))
    schema = OmegaConf.structured(Config(method=method_cls.Config()))
    try:
        merged = OmegaConf.merge(schema, raw, dots)
        cfg = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise _config_error(e, schema) from None
    except ValueError as e:  # a dataclass __post_init__ rejected a value
        raise ConfigError(f"invalid config: {e}") from None
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks that the schema types cannot express."""
    t, o = cfg.train, cfg.optim
    checks = [
        (t.steps >= 1 or (t.epochs or 0) > 0, "train.steps must be >= 1 (or set train.epochs > 0)"),
        (t.batch_size >= 1, "train.batch_size must be >= 1"),
        (t.grad_accum >= 1, "train.grad_accum must be >= 1"),
        (t.log_every >= 1 and t.ckpt_every >= 1, "train.log_every and train.ckpt_every must be >= 1"),
        (t.keep_last >= 0 and t.workers >= 0, "train.keep_last and train.workers must be >= 0"),
        (len(o.betas) == 2, "optim.betas must have two values"),
        (0.0 <= cfg.ema.momentum <= 1.0, "ema.momentum must be in [0, 1]"),
        (o.lr > 0 and o.min_lr >= 0, "optim.lr must be > 0 and optim.min_lr >= 0"),
        (o.clip_grad >= 0, "optim.clip_grad must be >= 0 (0 disables clipping)"),
        (0.0 <= o.warmup_fraction <= 1.0, "optim.warmup_fraction must be in [0, 1]"),
    ]
    errors = [msg for ok, msg in checks if not ok]
    if errors:
        raise ConfigError("invalid config: " + "; ".join(errors))


def to_container(cfg: Config) -> dict:
    """The config as plain python containers (enums as their names)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the fully resolved config; ``load_config(path)`` gives back an equal :class:`Config`."""
    Path(path).write_text(to_yaml(cfg))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}.{key}" if prefix else key).items()}


def config_diff(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    fa, fb = _flatten(to_container(a)), _flatten(to_container(b))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k))
