"""Weights in and out: import published checkpoints and motionrep runs by key mapping, export to safetensors.

One entry point, :func:`load_weights` (and its shortcut :func:`load_encoder`), accepts

* a motionrep run directory (``RUN/checkpoints/last.pt``) or checkpoint file;
* a file written by :func:`export_model` (``.safetensors`` with a JSON config in its metadata);
* an official file: DINO (release backbone or training checkpoint with ``student`` / ``teacher``), DINOv2 (release
  backbone with or without registers, timm names, training checkpoint with block chunks), a Midway training
  checkpoint (``student`` / ``teacher`` / ``motion_loss`` / ``dino_loss`` / ``args``) or a MoSiC backbone with any
  key prefix.

The encoder architecture of external files is read off the weights (width, depth, patch, MLP ratio, qkv bias,
registers, LayerScale, mask token; heads from :data:`HEADS_BY_WIDTH`), Midway's dynamics configuration likewise
(heads and levels from the checkpoint's ``args`` when present). Every imported module is loaded strictly: missing,
unknown or mis-shaped keys raise :class:`WeightsError` naming them. Files are read with ``safetensors`` or
``torch.load(weights_only=True)``; the only classes allowed besides tensors are those of
:func:`safe_arg_globals` (OmegaConf / argparse ``args``), see ``docs/weights.md``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from motionrep.models.blocks import LayerScale
from motionrep.models.dynamics import (
    MOTION_AGGREGATIONS,
    MidwayDynamics,
    MidwayDynamicsConfig,
    official_key_to_local,
)
from motionrep.models.heads import DINOHead
from motionrep.models.vit import VIT_PRESETS, VisionTransformer, resample_pos_embed

WEIGHTS = ("teacher", "student")
EXPORT_FORMAT = "motionrep-weights"
EXPORT_VERSION = 1
# Attention heads of the published ViTs by width (Ti, S, B, L, g): the only architecture fact not in the weights.
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1536: 24}
# Heads of the Midway dynamics in the official recipe (ViT-S and ViT-B alike), used when a checkpoint has no args.
MIDWAY_HEADS = {"midway_heads": 3, "forward_heads": 6, "backward_heads": 6}

_ANCHOR = "patch_embed.proj.weight"  # every ViT encoder has it; the text before it is the encoder's key prefix
_HEAD_COMPONENTS = ("dino_head", "head")  # where DINO / DINOv2 / Midway keep their DINO projection head
_COMPONENTS = (*_HEAD_COMPONENTS, "ibot_head")  # heads next to an unprefixed encoder
_WRAPPERS = ("model", "state_dict")  # plain wrappers around a state dict (DINOv2 / generic training checkpoints)
_BLOCK_CHUNK = re.compile(r"^blocks\.\d+\.(\d+)\.")  # DINOv2 training checkpoints: blocks.<chunk>.<block>.
_MAX_NAMES = 30


class WeightsError(ValueError):
    """A file that cannot be imported: unreadable, unsafe, or not matching the model (the message says why)."""


@dataclass
class WeightsInfo:
    """Where imported weights came from.

    ``format``: ``motionrep-export``, ``motionrep-checkpoint``, ``midway-official`` or ``state-dict``; ``method``:
    the training method when known (``midway``, ``dino``, ``mosic``, ...) else ``unknown``; ``weights``: which
    encoder was taken (``teacher`` / ``student``, ``single`` for files holding one); ``layout``: what was stripped
    or renamed; ``ignored``: components of the file that were not imported (e.g. ``optimizer``, ``ibot_head``);
    ``train_steps``: the run's ``train.steps`` for motionrep checkpoints and their exports.
    """

    path: str
    format: str
    method: str
    weights: str
    layout: str
    ignored: list[str] = field(default_factory=list)
    train_steps: int | None = None

    def describe(self) -> str:
        text = f"{self.format} {self.path} ({self.method}, {self.weights} encoder; {self.layout})"
        return text + (f"; not imported: {', '.join(self.ignored)}" if self.ignored else "")


@dataclass
class Imported:
    """What :func:`load_weights` built: the encoder, and the DINO head and Midway dynamics when the file has them."""

    encoder: VisionTransformer
    info: WeightsInfo
    head: DINOHead | None = None
    dynamics: MidwayDynamics | None = None


@dataclass
class _Parts:
    """State dicts already in the project's key layout, with the architecture when the file states it."""

    encoder: dict[str, Tensor]
    info: WeightsInfo
    arch: dict[str, Any] | None = None  # VisionTransformer kwargs; None: inferred from the weights
    head: dict[str, Tensor] | None = None
    dynamics: dict[str, Tensor] | None = None
    dynamics_spec: dict[str, Any] | None = None  # {"config": MidwayDynamicsConfig, "embed_dim": D, "grid_size": hw}


# ------------------------------------------------------------------------------------------------------ reading


def safe_arg_globals() -> list[Any]:
    """The classes a weights-only unpickler may build besides tensors: the pickled ``args`` of Midway (OmegaConf
    ``DictConfig``) and DINO (``argparse.Namespace``) training checkpoints, with the builtins they reference."""
    import argparse
    import collections
    import typing

    from omegaconf import DictConfig, ListConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode

    return [
        DictConfig,
        ListConfig,
        ContainerMetadata,
        Metadata,
        AnyNode,
        typing.Any,
        collections.defaultdict,
        dict,
        list,
        int,
        argparse.Namespace,
    ]


def checkpoint_path(path: str | Path) -> Path:
    """A file as is; a run directory to its ``checkpoints/last.pt``. ``WeightsError`` when neither exists."""
    path = Path(path)
    if path.is_dir():
        last = path / "checkpoints" / "last.pt"
        if not last.is_file():
            raise WeightsError(f"{path} is a directory without checkpoints/last.pt (not a motionrep run directory)")
        return last
    if not path.is_file():
        raise WeightsError(f"weights not found: {path}")
    return path


def read_file(path: str | Path) -> tuple[Any, dict[str, str]]:
    """The object stored in a weights file and its safetensors metadata (empty for torch files), read without
    executing code: ``safetensors``, or ``torch.load(weights_only=True)`` allowing only :func:`safe_arg_globals`."""
    path = checkpoint_path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        metadata = _export_metadata(path)
        try:
            return load_file(str(path)), metadata
        except (SafetensorError, OSError) as e:
            raise WeightsError(f"cannot read {path} as safetensors: {e}") from None
    try:
        with torch.serialization.safe_globals(safe_arg_globals()):
            return torch.load(path, map_location="cpu", weights_only=True), {}
    except pickle.UnpicklingError as e:
        found = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", str(e), re.IGNORECASE)
        if found is None:
            detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
            reason = detail.group(1).strip() if detail else str(e).splitlines()[0]
            raise WeightsError(f"cannot read {path}: not a torch checkpoint ({reason})") from None
        raise WeightsError(
            f"refused to load {path}: it needs {found.group(1)}, which a weights-only load does not allow "
            "(motionrep never executes code from a weights file; convert it to a plain state dict or safetensors)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise WeightsError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_NAMES])
    return shown + (f", ... ({len(keys) - _MAX_NAMES} more)" if len(keys) > _MAX_NAMES else "")


def _tensors(obj: Mapping, where: str) -> dict[str, Tensor]:
    """The tensor entries of a state dict; anything else in it is an error naming the keys."""
    bad = sorted(str(k) for k, v in obj.items() if not isinstance(v, Tensor))
    if bad:
        raise WeightsError(f"{where} holds non-tensor entries: {_names(bad)}")
    return dict(obj)


def _args_dict(args: Any) -> dict[str, Any]:
    """A training checkpoint's ``args`` (OmegaConf or argparse) as a plain dict; empty when absent."""
    if args is None:
        return {}
    from omegaconf import DictConfig, OmegaConf

    if isinstance(args, DictConfig):
        return OmegaConf.to_container(args, resolve=False)
    return dict(vars(args)) if hasattr(args, "__dict__") else dict(args) if isinstance(args, dict) else {}


# ------------------------------------------------------------------------------------------- external layouts


def _split_encoder(state: dict[str, Tensor], prefer: str, where: str) -> tuple[dict, str, dict[str, dict]]:
    """Find the ViT encoder in a flat state dict: its key prefix (the text before ``patch_embed.proj.weight``),
    the stripped encoder state, and the other components grouped by name (relative to the encoder's parent)."""
    prefixes = sorted({k[: -len(_ANCHOR)] for k in state if k.endswith(_ANCHOR)})
    if len(prefixes) > 1:
        prefixes = [p for p in prefixes if prefer in p.split(".")] or prefixes
    if not prefixes:
        firsts = sorted({k.split(".")[0] for k in state})
        raise WeightsError(f"{where}: no ViT encoder (no key ends with {_ANCHOR}); top-level names: {_names(firsts)}")
    if len(prefixes) > 1:
        raise WeightsError(f"{where}: several encoders (key prefixes {prefixes}); keep one in the file")
    prefix = prefixes[0]
    parent = prefix[: prefix.rstrip(".").rfind(".") + 1] if prefix else ""
    encoder: dict[str, Tensor] = {}
    components: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        if key.startswith(parent):
            rel = key[len(parent) :]
            name, _, rest = rel.partition(".")
            if prefix and key.startswith(prefix):
                encoder[key[len(prefix) :]] = value
            elif not prefix and name not in _COMPONENTS:
                encoder[key] = value
            else:
                components.setdefault(name, {})[rest] = value
        else:
            components.setdefault(key.split(".")[0], {})[key] = value
    return encoder, prefix, components


def _normalise_encoder(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """DINOv2 block chunks and timm names to the project's layout; returns the state and what was changed."""
    notes = []
    chunked = {_BLOCK_CHUNK.sub(r"blocks.\1.", k): v for k, v in state.items()}
    if chunked.keys() != state.keys():
        notes.append("DINOv2 block chunks renamed")
    state = chunked
    if "reg_token" in state:  # timm: registers are reg_token, class token holds its position embedding
        state["register_tokens"] = state.pop("reg_token")
        notes.append("timm reg_token renamed")
    pos = state.get("pos_embed")
    if pos is not None and pos.dim() == 3 and math.isqrt(pos.shape[1]) ** 2 == pos.shape[1]:
        state["pos_embed"] = torch.cat([pos.new_zeros(1, 1, pos.shape[2]), pos], dim=1)
        notes.append("class-token position row (already in cls_token, timm no_embed_class) added as zeros")
    return state, notes


def _pick_wrapper(obj: dict, weights: str, where: str) -> tuple[dict, str, list[str]]:
    """The state dict inside a training checkpoint: ``teacher`` / ``student`` by ``weights`` (teacher falls back to
    student when the file has no teacher), else ``model`` / ``state_dict``; the bare dict otherwise."""
    if any(isinstance(obj.get(w), Mapping) for w in WEIGHTS):
        order = WEIGHTS if weights == "teacher" else ("student",)
        chosen = next((w for w in order if isinstance(obj.get(w), Mapping)), None)
        if chosen is None:
            raise WeightsError(f"{where}: no 'student' weights in the file (it holds: {_names(sorted(obj))})")
        return obj[chosen], chosen, [k for k in obj if k != chosen]
    wrapper = next((w for w in _WRAPPERS if isinstance(obj.get(w), Mapping)), None)
    if wrapper is not None:
        return obj[wrapper], "single", [k for k in obj if k != wrapper]
    return obj, "single", []


def _from_state_dict(obj: dict, weights: str, where: str) -> _Parts:
    """DINO / DINOv2 / MoSiC / timm backbones and training checkpoints (and the encoder side of Midway's)."""
    inner, chosen, others = _pick_wrapper(obj, weights, where)
    state = _tensors(inner, where if chosen == "single" else f"{where}['{chosen}']")
    prefer = weights if chosen == "single" else chosen
    encoder, prefix, components = _split_encoder(state, prefer, where)
    if chosen == "single" and prefer in prefix.split("."):
        chosen = prefer
    encoder, notes = _normalise_encoder(encoder)
    head_name = next((n for n in _HEAD_COMPONENTS if n in components and _is_dino_head(components[n])), None)
    head = components.pop(head_name) if head_name else None
    steps = [
        f"'{chosen}'" if chosen != "single" else None,
        f"prefix '{prefix}' stripped" if prefix else "no prefix",
        *notes,
        f"{head_name} head" if head_name else None,
    ]
    layout = ", ".join(x for x in steps if x)
    ignored = sorted(others) + [f"{n} ({len(c)} tensors)" for n, c in sorted(components.items())]
    method = "dino" if head_name else "unknown"  # a DINO-family training checkpoint (DINO, DINOv2)
    info = WeightsInfo(where, "state-dict", method, chosen, layout, ignored)
    return _Parts(encoder, info, head=_head_state(head) if head else None)


def _is_dino_head(state: dict[str, Tensor]) -> bool:
    return any(k.startswith("last_layer.") for k in state)


def _head_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Weight-norm parametrisation names (``parametrizations.weight.original0/1``) to ``weight_g`` / ``weight_v``."""
    renames = {
        "last_layer.parametrizations.weight.original0": "last_layer.weight_g",
        "last_layer.parametrizations.weight.original1": "last_layer.weight_v",
    }
    return {renames.get(k, k): v for k, v in state.items()}


def _from_midway(
    obj: dict, weights: str, where: str, dynamics_overrides: Mapping[str, Any], encoder_only: bool
) -> _Parts:
    """An official Midway training checkpoint: encoder and DINO head from ``teacher`` / ``student``, dynamics from
    ``motion_loss`` (``module.`` stripped, names through :data:`motionrep.models.dynamics.OFFICIAL_KEY_MAP`)."""
    parts = _from_state_dict({k: v for k, v in obj.items() if k != "motion_loss"}, weights, where)
    parts.info.format, parts.info.method = "midway-official", "midway"
    if encoder_only:
        return parts
    args = _args_dict(obj.get("args"))
    motion = _tensors(obj["motion_loss"], f"{where}['motion_loss']")
    local, unknown = {}, []
    for key, value in motion.items():
        try:
            local[official_key_to_local(key)] = value
        except KeyError:
            unknown.append(key)
    if unknown:
        raise WeightsError(f"{where}: unknown Midway dynamics keys in motion_loss: {_names(sorted(unknown))}")
    depth = _num_blocks(parts.encoder)
    parts.dynamics = local
    parts.dynamics_spec = _midway_spec(local, depth, args, dynamics_overrides, where)
    parts.info.layout += ", dynamics from motion_loss"
    return parts


def _indices(state: Mapping[str, Tensor], pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern`` (one group) at the start of the keys."""
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in state if (m := regex.match(k))})


def _num_blocks(state: Mapping[str, Tensor]) -> int:
    return len(_indices(state, r"^blocks\.(\d+)\."))


def _require(state: Mapping[str, Tensor], keys: list[str], what: str, where: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise WeightsError(f"{where}: the {what} weights lack {_names(missing)}")


def _midway_spec(
    local: dict[str, Tensor], depth: int, args: dict, overrides: Mapping[str, Any], where: str
) -> dict[str, Any]:
    """The dynamics configuration read off the weights, heads / levels / gate bias from ``args`` when present."""
    _require(
        local, ["student_embed.weight", "pos_embed", "forward_predictors.0.blocks.0.mlp.fc1.weight"], "dynamics", where
    )
    embed_dim = local["student_embed.weight"].shape[1]
    n_levels = len(_indices(local, r"^midway_blocks\.(\d+)\."))
    per_frame = local["pos_embed"].shape[1] // 2
    use_cls = math.isqrt(per_frame) ** 2 != per_frame
    side = math.isqrt(per_frame - int(use_cls))
    if side * side != per_frame - int(use_cls):
        raise WeightsError(f"{where}: dynamics pos_embed has {per_frame} rows per frame, not a square grid")
    model_args = args.get("midway_model_configs") or {}
    levels = args.get("motion_feature_levels")
    levels = (
        [int(v) + 1 for v in levels] if levels else [depth * (k + 1) // (n_levels + 1) for k in range(n_levels + 1)]
    )
    spec: dict[str, Any] = {
        "levels": levels,
        "backward": bool(_indices(local, r"^student_backward\.(\d+)\.")),
        "backward_depth": max(1, len(_indices(local, r"^student_backward\.0\.blocks\.(\d+)\."))),
        "refine_target": "teacher_backward" if any(k.startswith("teacher_backward.") for k in local) else "teacher_raw",
        "gating": any(k.startswith("forward_predictors.0.gates.") for k in local),
        "midway_depth": len(_indices(local, r"^midway_blocks\.0\.(\d+)\.")),
        "forward_depth": len(_indices(local, r"^forward_predictors\.0\.blocks\.(\d+)\.")),
        "motion_dim": local["student_embed.weight"].shape[0],
        "use_cls_token": use_cls,
        "mlp_ratio": local["forward_predictors.0.blocks.0.mlp.fc1.weight"].shape[0] / embed_dim,
        "midway_heads": int(model_args.get("num_motion_heads", MIDWAY_HEADS["midway_heads"])),
        "forward_heads": int(model_args.get("num_pred_heads", MIDWAY_HEADS["forward_heads"])),
        "backward_heads": int(model_args.get("num_feature_heads", MIDWAY_HEADS["backward_heads"])),
        "gate_bias": float(model_args.get("gating_bias", 4.0)),
    }
    if model_args.get("motion_agg_type") in MOTION_AGGREGATIONS:
        spec["motion_aggregation"] = model_args["motion_agg_type"]
    if "motion_tokens" in local:
        spec["motion_tokens"] = local["motion_tokens"].shape[1]
    else:
        spec["motion_init"] = "zeros"
        spec["motion_tokens"] = int(model_args.get("motion_tokens", 10))
    return {"config": {**spec, **overrides}, "embed_dim": embed_dim, "grid_size": [side, side]}


def infer_vit_arch(state: Mapping[str, Tensor], num_heads: int | None = None, where: str = "weights") -> dict:
    """:class:`VisionTransformer` keyword arguments read off an encoder state dict in the project's layout.

    Heads come from ``num_heads`` or :data:`HEADS_BY_WIDTH`; the native image size is the position embedding's
    grid (``1 + g²`` rows) times the patch size. Keys it cannot use (e.g. a SwiGLU MLP) are left for the strict
    load to name.
    """
    _require(state, [_ANCHOR, "pos_embed"], "encoder", where)
    proj = state[_ANCHOR]
    width, patch = proj.shape[0], proj.shape[-1]
    rows = state["pos_embed"].shape[1] - 1
    grid = math.isqrt(rows)
    if grid * grid != rows or proj.shape[-2] != patch:
        raise WeightsError(f"{where}: pos_embed {tuple(state['pos_embed'].shape)} is not 1 + a square grid")
    heads = num_heads or HEADS_BY_WIDTH.get(width)
    if heads is None:
        raise WeightsError(
            f"{where}: cannot tell the number of attention heads of a width-{width} ViT (known widths: "
            f"{sorted(HEADS_BY_WIDTH)}); pass num_heads"
        )
    registers = state.get("register_tokens")
    return dict(
        img_size=grid * patch,
        patch_size=patch,
        embed_dim=width,
        depth=_num_blocks(state),
        num_heads=heads,
        mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / width if "blocks.0.mlp.fc1.weight" in state else 4.0,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
        layer_scale=1e-5 if "blocks.0.ls1.gamma" in state else None,
        num_register_tokens=0 if registers is None else registers.shape[1],
        mask_token="mask_token" in state,
    )


def encoder_arch(encoder: VisionTransformer) -> dict[str, Any]:
    """The keyword arguments that rebuild ``encoder``'s architecture (JSON-serialisable)."""
    block = encoder.blocks[0]
    return dict(
        img_size=[g * encoder.patch_size for g in encoder.pos_grid],
        patch_size=encoder.patch_size,
        embed_dim=encoder.embed_dim,
        depth=encoder.depth,
        num_heads=encoder.num_heads,
        mlp_ratio=block.mlp.fc1.out_features / encoder.embed_dim,
        qkv_bias=block.attn.qkv.bias is not None,
        layer_scale=1e-5 if isinstance(block.ls1, LayerScale) else None,
        num_register_tokens=encoder.num_register_tokens,
        mask_token=encoder.mask_token is not None,
        normalize=encoder.normalize,
        eps=encoder.norm.eps,
    )


# ----------------------------------------------------------------------------------------------- motionrep files


def _from_motionrep(obj: dict, weights: str, where: str) -> _Parts:
    """A motionrep training checkpoint: ``method`` state dict and the run's ``config`` text."""
    from motionrep.config import ConfigError, parse_config

    try:
        cfg = parse_config(obj["config"])
    except ConfigError as e:
        raise WeightsError(f"{where}: cannot read the run's config: {e}") from None
    method = _tensors(obj["method"], f"{where}['method']")
    prefixes = ("teacher_encoder.", "encoder.") if weights == "teacher" else ("encoder.",)
    prefix = next((p for p in prefixes if any(k.startswith(p) for k in method)), None)
    if prefix is None:
        raise WeightsError(f"{where}: the checkpoint holds no {' or '.join(p + '*' for p in prefixes)} weights")
    if cfg.model.name not in VIT_PRESETS:
        raise WeightsError(f"{where}: unknown ViT preset {cfg.model.name!r} in the run's config")
    arch = {**VIT_PRESETS[cfg.model.name], **cfg.model.overrides(), "drop_path_rate": 0.0}
    chosen = "teacher" if prefix == "teacher_encoder." else "student"
    head_prefix = "dino.teacher_head." if chosen == "teacher" else "dino.head."
    parts = _Parts(
        _strip(method, prefix),
        WeightsInfo(
            where,
            "motionrep-checkpoint",
            cfg.method.name,
            chosen,
            f"{prefix}* of the method state",
            train_steps=cfg.train.steps,
        ),
        arch=arch,
        head=_strip(method, head_prefix) or None,
    )
    dyn_cfg = getattr(cfg.method, "midway", None)
    if any(k.startswith("dynamics.") for k in method) and isinstance(dyn_cfg, MidwayDynamicsConfig):
        parts.dynamics = _strip(method, "dynamics.")
        parts.dynamics_spec = {
            "config": dataclasses.asdict(dyn_cfg),
            "embed_dim": arch["embed_dim"],
            "grid_size": list(_grid(cfg.data.motion_size, arch["patch_size"])),
        }
    return parts


def _strip(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _from_export(tensors: dict[str, Tensor], metadata: dict[str, str], where: str) -> _Parts:
    try:
        config = json.loads(metadata["config"])
        arch, version = config["encoder"], int(config["version"])
    except (KeyError, TypeError, ValueError) as e:
        raise WeightsError(f"{where}: broken motionrep export metadata ({e})") from None
    if version > EXPORT_VERSION:
        raise WeightsError(f"{where}: export version {version} is newer than this motionrep ({EXPORT_VERSION})")
    unknown = sorted(k for k in tensors if not k.startswith(("encoder.", "dynamics.")))
    if unknown:
        raise WeightsError(f"{where}: unknown tensors in a motionrep export: {_names(unknown)}")
    info = WeightsInfo(
        where,
        "motionrep-export",
        config.get("method", "unknown"),
        config.get("weights", "single"),
        f"exported from {config.get('source', '?')}",
        train_steps=config.get("train_steps"),
    )
    parts = _Parts(_strip(tensors, "encoder."), info, arch=dict(arch))
    if config.get("dynamics"):
        parts.dynamics, parts.dynamics_spec = _strip(tensors, "dynamics."), config["dynamics"]
    elif any(k.startswith("dynamics.") for k in tensors):
        raise WeightsError(f"{where}: dynamics tensors without a dynamics config in the metadata")
    return parts


def _read_parts(
    path: str | Path, weights: str = "teacher", dynamics_overrides: Mapping[str, Any] = (), encoder_only: bool = False
) -> _Parts:
    """Read any supported file into state dicts in the project's key layout (no modules built yet);
    ``encoder_only`` skips Midway's dynamics."""
    if weights not in WEIGHTS:
        raise WeightsError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    obj, metadata = read_file(path)
    where = str(checkpoint_path(path))
    if metadata.get("format") == EXPORT_FORMAT:
        return _from_export(obj, metadata, where)
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{where}: expected a state dict or checkpoint dict, got {type(obj).__name__}")
    if isinstance(obj.get("method"), Mapping) and isinstance(obj.get("config"), str):
        return _from_motionrep(obj, weights, where)
    if isinstance(obj.get("motion_loss"), Mapping):
        return _from_midway(obj, weights, where, dict(dynamics_overrides), encoder_only)
    return _from_state_dict(dict(obj), weights, where)


# ------------------------------------------------------------------------------------------------ building


def load_strict(module: nn.Module, state: Mapping[str, Tensor], what: str, where: str) -> None:
    """``module.load_state_dict(state)`` after checking that the key sets and shapes agree exactly; otherwise a
    :class:`WeightsError` naming every missing, unexpected and mis-shaped key."""
    expected = module.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    shapes = sorted(
        f"{k} (file {tuple(state[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    )
    problems = [
        f"{label}: {_names(keys)}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", shapes))
        if keys
    ]
    if problems:
        raise WeightsError(f"{where}: the {what} weights do not fit; " + "; ".join(problems))
    module.load_state_dict(dict(state))


def _grid(size: int | tuple[int, int] | list[int], patch: int) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else size
    return h // patch, w // patch


def _with_pos_grid(state: dict[str, Tensor], src: tuple[int, int], dst: tuple[int, int], antialias: bool) -> dict:
    pos = state.get("pos_embed")
    if pos is None or tuple(src) == tuple(dst) or pos.shape[1] != 1 + src[0] * src[1]:
        return state
    return {**state, "pos_embed": resample_pos_embed(pos, src, dst, antialias=antialias)}


def _build_head(state: dict[str, Tensor], where: str) -> DINOHead:
    """A :class:`DINOHead` shaped like ``state`` (``mlp.0/2/4``, ``last_layer.weight_v``), loaded strictly."""
    linears = _indices(state, r"^mlp\.(\d+)\.weight$")
    _require(state, ["last_layer.weight_v", "mlp.0.weight"], "DINO head", where)
    first, last = state["mlp.0.weight"], state[f"mlp.{linears[-1]}.weight"]
    head = DINOHead(
        first.shape[1],
        state["last_layer.weight_v"].shape[0],
        hidden=first.shape[0] if len(linears) > 1 else 1,
        bottleneck=last.shape[0],
        layers=len(linears),
        norm_last_layer=False,
    )
    load_strict(head, state, "DINO head", where)
    return head


def _build_dynamics(spec: dict[str, Any], state: dict[str, Tensor], where: str) -> MidwayDynamics:
    try:
        config = MidwayDynamicsConfig(**spec["config"])
        dynamics = MidwayDynamics(config, int(spec["embed_dim"]), tuple(spec["grid_size"]))
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{where}: cannot build the Midway dynamics: {e}") from None
    load_strict(dynamics, state, "Midway dynamics", where)
    return dynamics


def load_weights(
    path: str | Path,
    weights: str = "teacher",
    img_size: int | tuple[int, int] | None = None,
    num_heads: int | None = None,
    antialias: bool = True,
    dynamics_overrides: Mapping[str, Any] = (),
) -> Imported:
    """Build the encoder (plus the DINO head and Midway dynamics when present) of any supported file, on CPU.

    ``weights``: the ``teacher`` (EMA) or ``student`` encoder of a training checkpoint (teacher falls back to the
    student when there is none). ``img_size``: native image size of the built encoder; the position embedding is
    resampled to its grid (bicubic, ``antialias`` as timm does for checkpoints). ``num_heads``: for external ViTs
    of a width missing from :data:`HEADS_BY_WIDTH`. ``dynamics_overrides``: :class:`MidwayDynamicsConfig` fields
    that the weights of an official Midway checkpoint cannot tell (e.g. heads when it has no ``args``).
    """
    parts = _read_parts(path, weights, dynamics_overrides)
    where = parts.info.path
    encoder = _build_encoder(parts, img_size, num_heads, antialias)
    head = _build_head(parts.head, where) if parts.head else None
    dynamics = None
    if parts.dynamics_spec:
        dynamics = _build_dynamics(parts.dynamics_spec, parts.dynamics, where)
        if dynamics.student_embed.in_features != encoder.embed_dim or max(dynamics.config.levels) > encoder.depth:
            raise WeightsError(
                f"{where}: the dynamics (width {dynamics.student_embed.in_features}, levels "
                f"{dynamics.config.levels}) do not fit the encoder (width {encoder.embed_dim}, depth {encoder.depth})"
            )
    return Imported(encoder, parts.info, head, dynamics)


def _build_encoder(
    parts: _Parts, img_size: int | tuple[int, int] | None, num_heads: int | None, antialias: bool
) -> VisionTransformer:
    """The encoder of ``parts`` in eval mode, built for ``img_size`` (default: the checkpoint's native size)."""
    where = parts.info.path
    arch = parts.arch or infer_vit_arch(parts.encoder, num_heads, where)
    native = _grid(arch["img_size"], arch["patch_size"])
    target = arch["img_size"] if img_size is None else img_size
    try:
        encoder = VisionTransformer(**{**arch, "img_size": target})
    except (TypeError, ValueError) as e:
        raise WeightsError(f"{where}: cannot build the encoder {arch}: {e}") from None
    load_strict(encoder, _with_pos_grid(parts.encoder, native, encoder.pos_grid, antialias), "encoder", where)
    return encoder.eval()


def load_encoder(
    path: str | Path,
    weights: str = "teacher",
    img_size: int | tuple[int, int] | None = None,
    num_heads: int | None = None,
) -> VisionTransformer:
    """The encoder of a run directory, checkpoint, export or official file, in eval mode on CPU (see
    :func:`load_weights`); heads and dynamics in the file are neither built nor checked."""
    return _build_encoder(_read_parts(path, weights, encoder_only=True), img_size, num_heads, True)


def _export_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors metadata of ``path`` (header only); empty for other files."""
    path = checkpoint_path(path)
    if path.suffix != ".safetensors":
        return {}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"cannot read {path} as safetensors: {e}") from None


def load_exported(path: str | Path) -> Imported:
    """Load a file written by :func:`export_model` (encoder, and dynamics if exported)."""
    if _export_metadata(path).get("format") != EXPORT_FORMAT:
        raise WeightsError(f"{path} is not a motionrep export (.safetensors from `motionrep export`); use load_weights")
    return load_weights(path)


def load_encoder_into(encoder: VisionTransformer, path: str | Path, weights: str = "teacher") -> str:
    """Load an encoder's weights from any supported file into an existing ``encoder`` (strict keys and shapes);
    a position embedding of another grid is resampled to the encoder's native grid with antialiasing (timm's
    checkpoint behaviour). Returns a description of the source."""
    parts = _read_parts(path, weights, encoder_only=True)
    where = parts.info.path
    arch = parts.arch or {"img_size": None, "patch_size": encoder.patch_size}
    pos = parts.encoder.get("pos_embed")
    if arch["img_size"] is not None:
        src = _grid(arch["img_size"], arch["patch_size"])
    elif pos is not None and math.isqrt(pos.shape[1] - 1) ** 2 == pos.shape[1] - 1:
        src = (math.isqrt(pos.shape[1] - 1),) * 2
    else:
        src = encoder.pos_grid
    load_strict(encoder, _with_pos_grid(parts.encoder, src, encoder.pos_grid, True), "encoder", where)
    return parts.info.describe()


# ------------------------------------------------------------------------------------------------------ export


def export_model(
    run_or_ckpt: str | Path, out_path: str | Path, include_dynamics: bool = False, weights: str = "teacher"
) -> dict[str, Any]:
    """Write the encoder (and with ``include_dynamics`` Midway's dynamics) of any supported source to a
    ``.safetensors`` file whose metadata holds the JSON config (``format``, architecture, source, method); returns
    that config. Tensor names: ``encoder.<vit key>``, ``dynamics.<MidwayDynamics key>``."""
    from safetensors.torch import save_file

    out = Path(out_path)
    if out.suffix != ".safetensors":
        raise WeightsError(f"the export file must end in .safetensors, got {out}")
    loaded = load_weights(run_or_ckpt, weights)
    if include_dynamics and loaded.dynamics is None:
        raise WeightsError(f"{loaded.info.path} holds no Midway dynamics (method {loaded.info.method})")
    tensors = {f"encoder.{k}": v for k, v in loaded.encoder.state_dict().items()}
    config: dict[str, Any] = {
        "version": EXPORT_VERSION,
        "method": loaded.info.method,
        "weights": loaded.info.weights,
        "source": loaded.info.path,
        "source_format": loaded.info.format,
        "train_steps": loaded.info.train_steps,
        "encoder": encoder_arch(loaded.encoder),
        "dynamics": None,
    }
    if include_dynamics:
        dyn = loaded.dynamics
        tensors |= {f"dynamics.{k}": v for k, v in dyn.state_dict().items()}
        config["dynamics"] = {
            "config": dataclasses.asdict(dyn.config),
            "embed_dim": loaded.encoder.embed_dim,
            "grid_size": list(dyn.grid_size),
        }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    save_file(tensors, str(tmp), metadata={"format": EXPORT_FORMAT, "config": json.dumps(config)})
    os.replace(tmp, out)
    return config
