"""The evaluation suite: every protocol on every model and baseline, written as ``metrics.json``, figures and
``report.html``.

Models are encoders loaded from motionrep run directories or checkpoints (:func:`load_encoder`); baselines are
``random`` (the first model's architecture, untrained), ``pixels`` (mean patch colours; recognition protocols),
``dis`` (OpenCV DIS flow; motion) and ``supervised`` (the same architecture trained on the semantic labels of the
train split for as many steps as the evaluated runs). Data come from the synthetic world (:func:`synth_data`) or a
real labelled dataset (:mod:`motionrep.data.labeled`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from motionrep import viz
from motionrep.data.labeled import Clip, EvalData, FlowSet, SegSet, VideoSet
from motionrep.eval import report
from motionrep.eval.features import (
    CachedFeatures,
    FeatureExtractor,
    MidwayBackwardFeatures,
    PixelFeatures,
    ViTFeatures,
    extract,
    figure_indices,
    random_init,
)
from motionrep.eval.flow import MidwayPairFeatures, flow_dis, flow_match, flow_probe, flow_zero
from motionrep.eval.propagation import propagation
from motionrep.eval.segmentation import incontext, overcluster, seg_linear, train_supervised
from motionrep.eval.tracking import tracking
from motionrep.train import dist

PROTOCOLS = ("seg_linear", "overcluster", "incontext", "propagation", "flow_probe", "flow_match", "tracking")
RECOGNITION = ("seg_linear", "overcluster", "incontext", "propagation")
BASELINES = ("random", "pixels", "dis", "supervised")


class EvalError(ValueError):
    """A user mistake in the evaluation request (unknown protocol, missing data, unreadable checkpoint)."""


@dataclass
class SuiteConfig:
    protocols: tuple[str, ...] = PROTOCOLS
    baselines: tuple[str, ...] = BASELINES
    seg_steps: int = 300  # linear-probe optimiser steps
    flow_steps: int = 300  # flow-probe optimiser steps
    flow_finetune: bool = False  # flow probe also trains (a copy of) the backbone
    memory_size: int = 20480  # in-context memory bank size (patches)
    overcluster_factor: int = 3  # overclustering also at K = factor x #classes (many-to-one)
    supervised_steps: int | None = None  # None: the largest train.steps of the evaluated runs
    batch_size: int = 64
    tap: int | None = None  # encoder block whose tokens are evaluated (None: last)
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.protocols) - set(PROTOCOLS))
        if unknown:
            raise EvalError(f"unknown protocol(s) {unknown}; choose from {', '.join(PROTOCOLS)}")
        unknown = sorted(set(self.baselines) - set(BASELINES))
        if unknown:
            raise EvalError(f"unknown baseline(s) {unknown}; choose from {', '.join(BASELINES)}")


@dataclass
class Model:
    """An evaluated model: ``kind`` is ``encoder`` (a ViT), ``pixels`` or ``dis``."""

    name: str
    kind: str = "encoder"
    encoder: nn.Module | None = None
    run_dir: Path | None = None
    train_steps: int | None = None
    setup_seconds: float = 0.0  # time spent building the model (the supervised baseline's training)
    dynamics: nn.Module | None = None  # Midway dynamics: flow_probe also runs with them as the decoder input


# ----------------------------------------------------------------------------------------------------------- data


def _frames_tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()


def gap_flow(video, t: int, gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact flow ``(2, H, W)`` from frame ``t`` to ``t + gap`` of a synthetic clip, and its validity (the surface
    point under the pixel is visible in both frames), from the world's analytic tracks of every pixel centre."""
    if gap == 1:
        return video.flow[t], video.valid[t]
    h, w = video.frames.shape[1:3]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    xy = np.stack([xs.ravel(), ys.ravel()], axis=1)
    tracks, visible = video.track(xy, t)
    flow = (tracks[t + gap] - tracks[t]).T.reshape(2, h, w)
    return flow.astype(np.float32), (visible[t] & visible[t + gap]).reshape(h, w)


def videos_to_data(
    name: str,
    train: Sequence,
    val: Sequence,
    class_names: list[str],
    frame_step: int = 4,
    flow_gap: int = 1,
    ignore_index: int = 255,
) -> EvalData:
    """Evaluation data from synthetic clips (:class:`motionrep.data.synth.SynthVideo`): labelled frames every
    ``frame_step`` frames, flow pairs ``(t, t + flow_gap)`` at the same ``t`` (exact flow; for gaps > 1 from the
    world's analytic tracks), and whole evaluation clips with instance masks and ground-truth tracks."""

    def split(videos: Sequence, desc: str) -> tuple[SegSet, FlowSet, list[Clip]]:
        images, labels, f2, flows, valids, clips = [], [], [], [], [], []
        for v in tqdm(videos, desc=desc, leave=False, disable=not dist.is_main() or None):
            frames = _frames_tensor(v.frames)
            if len(frames) <= flow_gap:
                raise EvalError(f"flow gap {flow_gap} needs clips longer than {len(frames)} frames")
            t = torch.arange(0, len(frames) - flow_gap, frame_step)
            images.append(frames[t])
            labels.append(torch.from_numpy(v.semantic[t.numpy()].astype(np.int64)))
            f2.append(frames[t + flow_gap])
            pairs = [gap_flow(v, int(i), flow_gap) for i in t]
            flows.append(torch.from_numpy(np.stack([f for f, _ in pairs])))
            valids.append(torch.from_numpy(np.stack([m for _, m in pairs])))
            clips.append(
                Clip(
                    frames,
                    torch.from_numpy(v.instance.astype(np.int64)),
                    torch.from_numpy(v.tracks),
                    torch.from_numpy(v.visible),
                    v.name,
                )
            )
        seg = SegSet(torch.cat(images), torch.cat(labels), class_names, ignore_index)
        # The first frames of the pairs are the labelled frames: one tensor, so their features are computed once.
        flow = FlowSet(seg.images, torch.cat(f2), torch.cat(flows), torch.cat(valids))
        return seg, flow, clips

    if len(train) == 0 or len(val) == 0:
        raise EvalError(f"the synthetic suite needs train and evaluation clips, got {len(train)} and {len(val)}")
    if flow_gap < 1:
        raise EvalError(f"the flow gap must be >= 1 frame, got {flow_gap}")
    seg_train, flow_train, _ = split(train, "train clips")
    seg_val, flow_val, clips = split(val, "eval clips")
    return EvalData(name, seg_train, seg_val, flow_train, flow_val, VideoSet(clips))


def synth_data(
    preset: str = "small",
    split: str = "val",
    train_videos: int = 32,
    eval_videos: int = 16,
    frame_step: int = 4,
    data_dir: str | Path | None = None,
    seed: int = 0,
    flow_gap: int = 1,
) -> EvalData:
    """The synthetic suite's data: generated deterministically in memory, or read from a ``motionrep synth``
    folder (``data_dir`` with a ``train`` split and the ``split`` split)."""
    if frame_step < 1 or flow_gap < 1:
        raise EvalError(f"frame step and flow gap must be >= 1, got {frame_step} and {flow_gap}")
    from motionrep.data import synth

    if data_dir is not None:
        try:
            train_all, val_all = synth.load_split(data_dir, "train"), synth.load_split(data_dir, split)
        except (FileNotFoundError, ValueError) as e:
            raise EvalError(f"cannot read the synthetic world folder {data_dir}: {e}") from None
        train = [train_all[i] for i in range(min(train_videos, len(train_all)))]
        val = [val_all[i] for i in range(min(eval_videos, len(val_all)))]
        names = list(train_all.classes)
    else:
        try:
            config = synth.synth_preset(preset)
        except ValueError as e:
            raise EvalError(str(e)) from None
        train = synth.SynthWorld(config, "train", seed, train_videos)
        val = synth.SynthWorld(config, split, seed, eval_videos)
        names = list(synth.CLASS_NAMES)
    source = preset if data_dir is None else data_dir
    return videos_to_data(f"synth:{source}:{split}:gap{flow_gap}", train, val, names, frame_step, flow_gap)


# --------------------------------------------------------------------------------------------------------- models


def load_encoder(path: str | Path, weights: str = "teacher") -> Model:
    """A model from a motionrep run directory (``RUN/checkpoints/last.pt``), a checkpoint, an export, or official
    DINO / DINOv2 / Midway / MoSiC weights (:func:`motionrep.models.weights.load_weights`). ``weights``:
    ``teacher`` (the EMA teacher encoder, when there is one) or ``student``. Midway dynamics come along."""
    from motionrep.models.weights import WeightsError, load_weights

    path = Path(path)
    try:
        imported = load_weights(path, weights)
    except (WeightsError, OSError) as e:
        raise EvalError(str(e)) from None
    if path.is_dir():
        run_dir, name = path, path.name
    elif path.parent.name == "checkpoints":
        run_dir, name = path.parent.parent, path.parent.parent.name
    else:
        run_dir, name = None, path.stem
    return Model(
        name, "encoder", imported.encoder.eval(), run_dir, imported.info.train_steps, dynamics=imported.dynamics
    )


def load_model_arg(arg: str, weights: str = "teacher", random_weights: bool = False, seed: int = 0) -> Model:
    """``PATH`` or ``NAME=PATH`` → a :class:`Model` (named after its run directory unless ``NAME`` is given).

    With ``random_weights`` the architecture is kept and the weights re-initialised (model ``random`` unless
    named); ``PATH`` may then also be a ViT preset name (:data:`motionrep.models.vit.VIT_PRESETS`).
    """
    from motionrep.models.vit import VIT_PRESETS, build_vit

    name, sep, path = arg.partition("=")
    path = path if sep else arg
    if random_weights and not Path(path).exists() and path in VIT_PRESETS:
        model = Model("random", "encoder", random_init(build_vit(path), seed).eval())
    elif random_weights:
        model = Model("random", "encoder", random_init(load_encoder(path, weights).encoder, seed).eval())
    else:
        model = load_encoder(path, weights)
    if sep:
        model.name = name
    return model


def extractor_for(model: Model, cfg: SuiteConfig, device: torch.device) -> FeatureExtractor:
    if model.kind == "pixels":
        return PixelFeatures(model.encoder.patch_size if model.encoder is not None else 8)
    model.encoder.to(device).eval()
    return ViTFeatures(model.encoder, cfg.tap)


def applicable(model: Model, cfg: SuiteConfig, data: EvalData) -> list[str]:
    if model.kind == "dis":
        wanted = ["dis", "zero_flow"] if any(p in cfg.protocols for p in ("flow_probe", "flow_match")) else []
    elif model.kind == "pixels":
        wanted = [p for p in cfg.protocols if p in RECOGNITION]
    else:
        wanted = list(cfg.protocols)
        if model.dynamics is not None and "flow_probe" in wanted:
            wanted.insert(wanted.index("flow_probe") + 1, "flow_probe_dynamics")
        if model.dynamics is not None and model.dynamics.config.backward and "seg_linear" in wanted:
            wanted.insert(wanted.index("seg_linear") + 1, "seg_linear_backward")
    variant_of = {"flow_probe_dynamics": "flow_probe", "seg_linear_backward": "seg_linear"}
    return [p for p in wanted if data.supports(variant_of.get(p, p))]


def baseline_models(models: list[Model], cfg: SuiteConfig, data: EvalData, device: torch.device) -> list[Model]:
    """The baselines of ``cfg.baselines`` built on the first model's architecture."""
    out = []
    arch = models[0].encoder if models else None
    for name in cfg.baselines:
        if name in {m.name for m in models}:
            continue
        if name == "random" and arch is not None:
            out.append(Model("random", "encoder", random_init(arch, cfg.seed).eval()))
        elif name == "pixels":
            out.append(Model("pixels", "pixels", arch))
        elif name == "dis":
            out.append(Model("dis", "dis"))
        elif name == "supervised" and arch is not None and data.seg_train is not None:
            steps = cfg.supervised_steps or max((m.train_steps or 0) for m in models) or cfg.seg_steps
            t0 = time.perf_counter()
            enc = random_init(arch, cfg.seed).to(device)
            train_supervised(enc, data.seg_train, steps, seed=cfg.seed)
            seconds = time.perf_counter() - t0
            out.append(Model("supervised", "encoder", enc.eval(), train_steps=steps, setup_seconds=seconds))
    return out


# ----------------------------------------------------------------------------------------------------- evaluation


@dataclass
class ModelOutput:
    metrics: dict[str, float] = field(default_factory=dict)
    figures: list[tuple[str, str]] = field(default_factory=list)  # (caption, path relative to the report)
    seconds: dict[str, float] = field(default_factory=dict)


def evaluate_model(model: Model, data: EvalData, cfg: SuiteConfig, device: torch.device) -> tuple[ModelOutput, dict]:
    """Run the applicable protocols; return metrics (``<protocol>.<metric>``) and raw outputs for figures."""
    out, raw = ModelOutput(), {}
    extractor = None if model.kind == "dis" else CachedFeatures(extractor_for(model, cfg, device))
    classes = data.seg_val.num_classes if data.seg_val is not None else 0
    for protocol in applicable(model, cfg, data):
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed)
        if protocol == "seg_linear":
            res = seg_linear(extractor, data.seg_train, data.seg_val, cfg.seg_steps, seed=cfg.seed)
        elif protocol == "seg_linear_backward":
            backward = MidwayBackwardFeatures(model.encoder, model.dynamics.to(device).eval())
            res = seg_linear(backward, data.seg_train, data.seg_val, cfg.seg_steps, seed=cfg.seed)
        elif protocol == "overcluster":
            ks = (cfg.overcluster_factor * classes,) if cfg.overcluster_factor > 1 else ()
            res = overcluster(extractor, data.seg_val, ks, seed=cfg.seed)
        elif protocol == "incontext":
            res = incontext(extractor, data.seg_train, data.seg_val, cfg.memory_size, seed=cfg.seed)
        elif protocol == "propagation":
            res = propagation(extractor, data.videos)
        elif protocol == "flow_probe":
            res = flow_probe(extractor, data.flow_train, data.flow_val, cfg.flow_steps, finetune=cfg.flow_finetune)
        elif protocol == "flow_probe_dynamics":
            pair = MidwayPairFeatures(model.encoder, model.dynamics.to(device).eval())
            res = flow_probe(
                extractor,
                data.flow_train,
                data.flow_val,
                cfg.flow_steps,
                finetune=cfg.flow_finetune,
                pair_features=pair,
            )
        elif protocol == "flow_match":
            res = flow_match(extractor, data.flow_val)
        elif protocol == "tracking":
            res = tracking(extractor, data.videos)
        elif protocol == "zero_flow":
            res = flow_zero(data.flow_val)
        else:  # "dis"
            res = flow_dis(data.flow_val)
        out.seconds[protocol] = time.perf_counter() - t0
        out.metrics.update({f"{protocol}.{k}": v for k, v in res.metrics.items()})
        raw[protocol] = res
    if extractor is not None and data.seg_val is not None:
        raw["features"] = extract(extractor, data.seg_val.images[figure_indices(len(data.seg_val))], distributed=False)
    return out, raw


def _up(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None].float()
    return F.interpolate(t, size=hw, mode="nearest")[0].permute(1, 2, 0).numpy()


def model_figures(model: Model, raw: dict, data: EvalData, fig_dir: Path, rel: str) -> list[tuple[str, str]]:
    """PCA maps, segmentation overlays, flow colour maps and training curves of one model."""
    figs = []
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in model.name)
    if data.seg_val is not None and ("features" in raw or any(p in raw for p in RECOGNITION)):
        idx = figure_indices(len(data.seg_val)).tolist()
        n = len(idx)
        frames = [viz.to_uint8(data.seg_val.images[i]) for i in idx]
        hw = frames[0].shape[:2]
        k = data.seg_val.num_classes
        rows = [[(f"frame {i}", frames[i]) for i in range(n)]]
        rows.append(
            [
                (f"truth {i}", viz.overlay_labels(frames[i], data.seg_val.labels[j].numpy(), k))
                for i, j in enumerate(idx)
            ]
        )
        if "features" in raw:
            pca = viz.pca_rgb(raw["features"])
            rows.append([(f"PCA {i}", _up(pca[i], hw)) for i in range(n)])
        for p in ("seg_linear", "overcluster", "incontext"):
            if p in raw and raw[p].predictions is not None and len(raw[p].predictions):
                preds = raw[p].predictions
                rows.append([(f"{p} {i}", viz.overlay_labels(frames[i], preds[i].numpy(), k)) for i in range(n)])
        figs.append(("features and segmentation", viz.save_grid(fig_dir / f"{safe}_segmentation.png", rows)))
    flow_keys = [p for p in ("flow_probe", "flow_probe_dynamics", "flow_match", "dis") if p in raw]
    if flow_keys and data.flow_val is not None:
        rows = []
        for i, j in enumerate(figure_indices(len(data.flow_val)).tolist()):
            gt = data.flow_val.flow[j]
            scale = float(torch.linalg.vector_norm(gt, dim=0).max().clamp_min(1.0))
            row = [(f"frame {j}", viz.to_uint8(data.flow_val.image1[j])), ("truth", viz.flow_to_rgb(gt, scale))]
            row += [(p, viz.flow_to_rgb(raw[p].predictions[i], scale)) for p in flow_keys]
            rows.append(row)
        figs.append(("flow (colour wheel, shared scale per row)", viz.save_grid(fig_dir / f"{safe}_flow.png", rows)))
    if "propagation" in raw and len(raw["propagation"].predictions) and data.videos is not None:
        clip = data.videos.clips[0]
        pred = raw["propagation"].predictions
        ts = np.linspace(0, len(clip.frames) - 1, min(4, len(clip.frames))).astype(int)
        k = int(max(clip.masks.max(), pred.max())) + 1
        rows = [
            [(f"t={t} truth", viz.overlay_labels(viz.to_uint8(clip.frames[t]), clip.masks[t].numpy(), k)) for t in ts],
            [(f"t={t} propagated", viz.overlay_labels(viz.to_uint8(clip.frames[t]), pred[t].numpy(), k)) for t in ts],
        ]
        figs.append(("label propagation", viz.save_grid(fig_dir / f"{safe}_propagation.png", rows)))
    curves = {}
    if model.run_dir is not None:
        from motionrep.train.logging import read_metrics

        records = [r for r in read_metrics(model.run_dir) if "loss" in r and "step" in r]
        if records:
            curves["pretraining loss"] = ([r["step"] for r in records], [r["loss"] for r in records])
    if "flow_probe" in raw and raw["flow_probe"].curve:
        c = raw["flow_probe"].curve
        curves["flow probe EPE"] = (list(range(1, len(c) + 1)), c)
    if curves:
        figs.append(("training curves", viz.plot_curves(fig_dir / f"{safe}_curves.png", curves, model.name)))
    return [(caption, f"{rel}/{Path(p).name}") for caption, p in figs]


def _json_value(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else round(float(v), 4)


def run_suite(
    models: list[Model],
    data: EvalData,
    cfg: SuiteConfig,
    out_dir: str | Path,
    device: torch.device | None = None,
    figures: bool = True,
) -> dict[str, dict[str, float | None]]:
    """Evaluate ``models`` and the configured baselines; write ``metrics.json``, ``figures/`` and ``report.html``
    into ``out_dir`` (rank 0 only). Returns the metrics."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out_dir = Path(out_dir)
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise EvalError(f"model names must be unique, got {names}; name them with NAME=PATH")
    everything = models + baseline_models(models, cfg, data, device)
    results: dict[str, ModelOutput] = {}
    for model in tqdm(everything, desc="models", disable=not dist.is_main() or None):
        output, raw = evaluate_model(model, data, cfg, device)
        if figures and dist.is_main():
            output.figures = model_figures(model, raw, data, out_dir / "figures", "figures")
        results[model.name] = output
    metrics = {name: {k: _json_value(v) for k, v in r.metrics.items()} for name, r in results.items()}
    if dist.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        setup = {m.name: m.setup_seconds for m in everything if m.setup_seconds}
        timing = {
            name: {
                k: round(v, 2) for k, v in {**({"setup": setup[name]} if name in setup else {}), **r.seconds}.items()
            }
            for name, r in results.items()
        }
        (out_dir / "timing.json").write_text(json.dumps(timing, indent=2) + "\n")
        report.write_report(
            out_dir / "report.html",
            metrics,
            {name: r.figures for name, r in results.items()},
            {"data": data.name, "protocols": ", ".join(cfg.protocols), "device": str(device)},
        )
    return metrics


def format_table(metrics: dict[str, dict[str, float | None]]) -> str:
    """The metrics as a plain-text table: one row per metric, one column per model."""
    models = list(metrics)
    keys = report.metric_rows(metrics)
    width = max([len("metric"), *map(len, keys)])
    cols = [max(8, len(m)) for m in models]
    lines = ["metric".ljust(width) + "  " + "  ".join(m.rjust(c) for m, c in zip(models, cols, strict=True))]
    for key in keys:
        cells = []
        for m, c in zip(models, cols, strict=True):
            v = metrics[m].get(key)
            cells.append(("-" if v is None else f"{v:.2f}").rjust(c))
        lines.append(key.ljust(width) + "  " + "  ".join(cells))
    return "\n".join(lines)
