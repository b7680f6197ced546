"""``motionrep paper-eval <protocol> MODEL --data PATH --out DIR``: the papers' evaluation protocols at scale
(``docs/paper_protocols.md``). Each protocol writes ``DIR/<protocol>.json`` with the model, every setting and the
metrics; all run under torchrun (features, metrics and training sharded over ranks)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

paper_app = typer.Typer(
    help="Paper-scale evaluation protocols (GPU, real datasets; synth on CPU).", no_args_is_help=True
)

MODEL_HELP = "Run directory or checkpoint (NAME=PATH to name it); a ViT preset with --random-init."
SYNTH_HELP = "synth: the synthetic world (--data: a `motionrep synth` folder, else generated with --preset)."


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


def _run(out: Path, protocol: str, device: str, body: Callable[[Any], tuple[str, dict, dict]]) -> None:
    """Join torchrun's group, run ``body(torch.device) -> (model name, settings, metrics)``, write the JSON on
    rank 0; user mistakes end with a one-line error and exit code 2."""
    from motionrep.data.catalog import DatasetLayoutError
    from motionrep.eval.suite import EvalError
    from motionrep.train import dist

    info = dist.init_distributed(device)
    try:
        name, settings, metrics = body(info.device)
    except (EvalError, DatasetLayoutError, ValueError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    finally:
        dist.cleanup()
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        record = {"model": name, "protocol": protocol, "world_size": info.world_size, "settings": settings}
        (out / f"{protocol}.json").write_text(json.dumps({**record, "metrics": metrics}, indent=2) + "\n")
        typer.echo(json.dumps(metrics, indent=2))
        typer.echo(f"written: {out / f'{protocol}.json'}")


def _encoder(model: str, weights: str, random_init: bool, seed: int, device):
    from motionrep.eval.suite import EvalError, load_model_arg

    if weights not in ("teacher", "student"):
        raise EvalError(f"--weights must be teacher or student, got {weights!r}")
    loaded = load_model_arg(model, weights, random_init, seed)
    return loaded.name, loaded.encoder.to(device).eval()


def _midway(model: str, device):
    """``(name, student encoder, dynamics)`` of a Midway run with latent dynamics."""
    from motionrep.eval.perturbation import load_midway

    name, sep, path = model.partition("=")
    path = path if sep else model
    method = load_midway(path, device)
    return (name if sep else Path(path).name), method.encoder, method.dynamics


def _synth(data: Path | None, preset: str, split: str, videos: tuple[int, int], seed: int):
    from motionrep.eval.suite import synth_data

    return synth_data(preset, split, videos[0], videos[1], data_dir=data, seed=seed)


def _seg_sets(dataset: str, data: Path | None, splits: tuple[str, str], preset: str, videos, seed: int):
    from motionrep.eval.paper.streams import SegSetItems, seg_files

    if dataset == "synth":
        d = _synth(data, preset, "val", videos, seed)
        return SegSetItems(d.seg_train), SegSetItems(d.seg_val)
    if data is None:
        raise ValueError(f"--dataset {dataset} needs --data PATH (the dataset root)")
    return seg_files(dataset, data, splits[0]), seg_files(dataset, data, splits[1])


def _seg_command(linear: bool):
    def command(
        model: str = typer.Argument(..., help=MODEL_HELP),
        out: Path = typer.Option(..., "--out", help="Output directory."),
        data: Path = typer.Option(None, help="Dataset root (or a `motionrep synth` folder)."),
        dataset: str = typer.Option("voc", help="voc, ade20k, cityscapes or " + SYNTH_HELP),
        train_split: str = typer.Option("train", help="Training split name of the dataset."),
        val_split: str = typer.Option("val", help="Validation split name of the dataset."),
        features: str = typer.Option("encoder", help="encoder (taps) or backward (Midway backward features)."),
        levels: str = typer.Option("", help="Blocks / levels read (default: last block for linear, 3/6/9/12-style)."),
        finetune: bool = typer.Option(False, help="UperNet only: finetune the backbone too."),
        steps: int = typer.Option(60000, help="Training iterations."),
        batch_size: int = typer.Option(16, help="Global batch (papers: 16 frozen, 4 finetune)."),
        lr: float = typer.Option(3e-5, help="AdamW learning rate."),
        weight_decay: float = typer.Option(0.05, help="AdamW weight decay."),
        warmup: int = typer.Option(1500, help="Linear warm-up iterations."),
        crop: int = typer.Option(512, help="Training crop and sliding window size."),
        stride: int = typer.Option(341, help="Sliding-window stride."),
        short_side: int = typer.Option(512, help="Images rescaled to this shorter side."),
        width: int = typer.Option(512, help="UperNet channels."),
        weights: str = typer.Option("teacher", help="Encoder weights of a run: teacher or student."),
        random_init: bool = typer.Option(False, help="Untrained weights of the same architecture."),
        preset: str = typer.Option("small", help="Synthetic preset (synth without --data)."),
        train_videos: int = typer.Option(32, help="Synthetic training clips."),
        eval_videos: int = typer.Option(16, help="Synthetic evaluation clips."),
        workers: int = typer.Option(4, help="Data-loading workers per rank."),
        device: str = typer.Option("auto", help="auto, cpu or cuda."),
        seed: int = typer.Option(0, help="Sampler and crop seed."),
    ) -> None:
        from motionrep.eval.paper.features import BackwardFeatures, MultiLevelFeatures, default_levels
        from motionrep.eval.paper.seg_readout import ReadoutConfig, seg_readout

        protocol = "seg-linear" if linear else ("seg-upernet-finetune" if finetune else "seg-upernet")

        def body(dev):
            mode = "linear" if linear else ("upernet-finetune" if finetune else "upernet")
            cfg = ReadoutConfig(mode, steps, batch_size, lr, weight_decay, warmup, crop, stride, short_side,
                                width=width, workers=workers, seed=seed)  # fmt: skip
            train, val = _seg_sets(dataset, data, (train_split, val_split), preset, (train_videos, eval_videos), seed)
            chosen = list(_ints(levels)) if levels else None
            if features == "backward":
                if random_init:
                    raise ValueError("--features backward reads a trained Midway run; drop --random-init")
                name, encoder, dynamics = _midway(model, dev)
                objective = dynamics.config.objective_levels
                chosen = chosen or ([objective[0]] if linear else objective)
                feats = BackwardFeatures(encoder, dynamics, chosen)
            elif features == "encoder":
                name, encoder = _encoder(model, weights, random_init, seed, dev)
                chosen = chosen or ([encoder.depth] if linear else default_levels(encoder.depth))
                feats = MultiLevelFeatures(encoder, chosen)
            else:
                raise ValueError(f"--features must be encoder or backward, got {features!r}")
            if not linear and len(chosen) != 4:
                raise ValueError(f"UperNet reads 4 levels; got {chosen} (backward features: use --features encoder)")
            settings = {**vars(cfg), "dataset": dataset, "features": features, "levels": chosen,
                        "train_images": len(train), "val_images": len(val)}  # fmt: skip
            return name, settings, seg_readout(feats.to(dev), train, val, cfg, dev)

        _run(out, protocol, device, body)

    command.__doc__ = (
        "DeepLab-v1-style linear readout on frozen features (last block, or Midway's lowest backward level)."
        if linear
        else "UperNet on four frozen feature levels (encoder taps 3/6/9/12-style), or finetuned with --finetune."
    )
    return command


@paper_app.command("video-cluster")
def video_cluster(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    data: Path = typer.Option(None, help="DAVIS-2017 or YouTube-VOS root (or a `motionrep synth` folder)."),
    dataset: str = typer.Option("davis", help="davis, ytvos or " + SYNTH_HELP),
    split: str = typer.Option("val", help="DAVIS ImageSets/2017/<split>.txt, or the YouTube-VOS split folder."),
    protocols: str = typer.Option("F,C,D", help="Comma-separated: F (frame), C (clip), D (dataset)."),
    size: int = typer.Option(224, help="Frames resized to size x size."),
    res: int = typer.Option(224, help="F/C clustering resolution (features bilinearly upsampled)."),
    eval_res: int = typer.Option(112, help="D protocol resolution."),
    pca_dim: int = typer.Option(50, help="PCA dimensions (0: none)."),
    overcluster: int = typer.Option(1, help="K multiplier (> 1: many-to-one matching)."),
    max_frames: int = typer.Option(0, help="At most this many evenly spaced frames per clip (0: all)."),
    sample_per_frame: int = typer.Option(500, help="D protocol: pixels per frame in the k-means fitting sample."),
    weights: str = typer.Option("teacher", help="Encoder weights of a run: teacher or student."),
    random_init: bool = typer.Option(False, help="Untrained weights of the same architecture."),
    preset: str = typer.Option("small", help="Synthetic preset (synth without --data)."),
    eval_videos: int = typer.Option(16, help="Synthetic evaluation clips."),
    workers: int = typer.Option(2, help="Data-loading workers per rank."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    seed: int = typer.Option(0, help="k-means and sampling seed."),
) -> None:
    """Unsupervised video semantic segmentation (TimeT / MoSiC): PCA + k-means, F / C / D protocols, mIoU."""
    from motionrep.eval.features import ViTFeatures
    from motionrep.eval.paper.streams import ClipItems, davis_clips, ytvos_clips
    from motionrep.eval.paper.video_clustering import VideoClusterConfig, video_clustering

    def body(dev):
        cfg = VideoClusterConfig(tuple(p.strip().upper() for p in protocols.split(",") if p.strip()), size, res,
                                 eval_res, pca_dim or None, overcluster, sample_per_frame=sample_per_frame,
                                 workers=workers, seed=seed)  # fmt: skip
        if dataset == "synth":
            clips = _synth(data, preset, "val", (1, eval_videos), seed).videos.clips
            clips = ClipItems([c if not max_frames else type(c)(c.frames[:max_frames], c.masks[:max_frames])
                               for c in clips], 1 + max(int(c.masks.max()) for c in clips))  # fmt: skip
        elif dataset in ("davis", "ytvos"):
            if data is None:
                raise ValueError(f"--dataset {dataset} needs --data PATH (the dataset root)")
            make = davis_clips if dataset == "davis" else ytvos_clips
            clips = make(data, split, max_frames=max_frames or None)
        else:
            raise ValueError(f"--dataset must be davis, ytvos or synth, got {dataset!r}")
        name, encoder = _encoder(model, weights, random_init, seed, dev)
        settings = {**vars(cfg), "dataset": dataset, "clips": len(clips), "num_classes": clips.num_classes}
        return name, settings, video_clustering(ViTFeatures(encoder), clips, cfg)

    _run(out, "video-cluster", device, body)


@paper_app.command("unsup-seg")
def unsup_seg_command(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    data: Path = typer.Option(None, help="Dataset root (or a `motionrep synth` folder)."),
    dataset: str = typer.Option("voc", help="voc or " + SYNTH_HELP),
    split: str = typer.Option("val", help="Evaluated split."),
    size: int = typer.Option(448, help="Images resized to size x size."),
    k: int = typer.Option(200, help="Overclustering K."),
    pca_dim: int = typer.Option(50, help="PCA dimensions (0: none)."),
    bg_fraction: float = typer.Option(0.65, help="Share of clusters (lowest attention precision) set to background."),
    attn_mass: float = typer.Option(0.6, help="CLS-attention mass kept as the noisy foreground."),
    sample_per_image: int = typer.Option(100, help="Patches per image in the k-means fitting sample."),
    weights: str = typer.Option("teacher", help="Encoder weights of a run: teacher or student."),
    random_init: bool = typer.Option(False, help="Untrained weights of the same architecture."),
    preset: str = typer.Option("small", help="Synthetic preset (synth without --data)."),
    eval_videos: int = typer.Option(16, help="Synthetic evaluation clips."),
    workers: int = typer.Option(2, help="Data-loading workers per rank."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    seed: int = typer.Option(0, help="k-means and sampling seed."),
) -> None:
    """Fully unsupervised segmentation (Leopart-style): overclustering, attention foreground, merge, Hungarian mIoU."""
    from motionrep.eval.paper.unsup_seg import UnsupSegConfig, unsup_seg

    def body(dev):
        cfg = UnsupSegConfig(size, k, pca_dim or None, bg_fraction, attn_mass, sample_per_image, workers=workers,
                             seed=seed)  # fmt: skip
        _, val = _seg_sets(dataset, data, (split, split), preset, (1, eval_videos), seed)
        name, encoder = _encoder(model, weights, random_init, seed, dev)
        return name, {**vars(cfg), "dataset": dataset, "images": len(val)}, unsup_seg(encoder, val, cfg)

    _run(out, "unsup-seg", device, body)


@paper_app.command("incontext")
def incontext_command(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    data: Path = typer.Option(None, help="Dataset root (or a `motionrep synth` folder)."),
    dataset: str = typer.Option("voc", help="voc, ade20k, cityscapes or " + SYNTH_HELP),
    train_split: str = typer.Option("trainaug", help="Memory split."),
    val_split: str = typer.Option("val", help="Query split."),
    fractions: str = typer.Option("128,64,8,1", help="Denominators of the training fractions."),
    seeds: str = typer.Option("42,400,783,1293,4019", help="Subset seeds."),
    memory_size: int = typer.Option(10_240_000, help="Memory bank size (patches)."),
    size: int = typer.Option(518, help="Images resized to size x size."),
    k: int = typer.Option(30, help="Neighbours."),
    temperature: float = typer.Option(0.02, help="Softmax temperature."),
    matching: str = typer.Option("hungarian", help="hungarian (open-hummingbird-eval parity) or identity."),
    batch_size: int = typer.Option(24, help="Images per streamed chunk and rank (Hummingbird: 24 per GPU)."),
    workers: int = typer.Option(-1, help="Data-loading workers per rank (-1: 2 for data on disk, 0 in memory)."),
    weights: str = typer.Option("teacher", help="Encoder weights of a run: teacher or student."),
    random_init: bool = typer.Option(False, help="Untrained weights of the same architecture."),
    preset: str = typer.Option("small", help="Synthetic preset (synth without --data)."),
    train_videos: int = typer.Option(32, help="Synthetic training clips."),
    eval_videos: int = typer.Option(16, help="Synthetic evaluation clips."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    seed: int = typer.Option(0, help="Seed of the random initialisation."),
) -> None:
    """Hummingbird in-context retrieval on fixed seeded data fractions; runs, settings and summary in the output."""
    from motionrep.eval.features import ViTFeatures
    from motionrep.eval.paper.incontext_fractions import FractionConfig, incontext_fractions

    def body(dev):
        cfg = FractionConfig(_ints(fractions), _ints(seeds), size, memory_size, k, temperature, matching, batch_size,
                             None if workers == -1 else workers)  # fmt: skip
        train, val = _seg_sets(dataset, data, (train_split, val_split), preset, (train_videos, eval_videos), seed)
        name, encoder = _encoder(model, weights, random_init, seed, dev)
        result = incontext_fractions(ViTFeatures(encoder), train, val, cfg)
        return name, {**result["settings"], "dataset": dataset}, {"runs": result["runs"], "summary": result["summary"]}

    _run(out, "incontext", device, body)


@paper_app.command("flow-finetune")
def flow_finetune_command(
    model: str = typer.Argument(..., help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    data: Path = typer.Option(None, help="Root holding the flow datasets (or a `motionrep synth` folder)."),
    train_set: str = typer.Option(
        "croco-mix",
        "--train",
        help="croco-mix, chairs-things, chairs, things, tartanair, sintel-clean, sintel-final, kitti, or synth.",
    ),  # fmt: skip
    val_sets: str = typer.Option("sintel-clean,sintel-final", "--val", help="Comma-separated validation sets."),
    val_split: str = typer.Option("", help="Split of the validation sets (default: each set's own default)."),
    steps: int = typer.Option(900_000, help="Training iterations (CroCo: 240 epochs x 30k pairs / 8)."),
    batch_size: int = typer.Option(8, help="Global batch."),
    lr: float = typer.Option(2e-5, help="AdamW learning rate."),
    warmup: int = typer.Option(3750, help="Linear warm-up iterations."),
    crop: str = typer.Option("320,384", help="Training crop and inference tile H,W."),
    overlap: float = typer.Option(0.5, help="Tile overlap at inference."),
    frozen: bool = typer.Option(False, help="Train the DPT head only (paper Table 7)."),
    random_dynamics: bool = typer.Option(False, help="Midway run: randomly initialised dynamics (enc. only)."),
    width: int = typer.Option(256, help="DPT channels."),
    weights: str = typer.Option("teacher", help="Encoder weights of a non-Midway run: teacher or student."),
    random_init: bool = typer.Option(False, help="Untrained weights of the same architecture."),
    preset: str = typer.Option("small", help="Synthetic preset (synth without --data)."),
    train_videos: int = typer.Option(32, help="Synthetic training clips."),
    eval_videos: int = typer.Option(16, help="Synthetic evaluation clips."),
    workers: int = typer.Option(4, help="Data-loading workers per rank."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    seed: int = typer.Option(0, help="Sampler, crop and initialisation seed."),
) -> None:
    """CroCo-Flow-style finetuning: DPT head on encoder + Midway dynamics token maps; tiled EPE per validation set."""
    import torch

    from motionrep.data.flow_datasets import flow_dataset
    from motionrep.eval.paper.flow_finetune import FlowFinetuneConfig, FlowModel, baseline_dynamics, flow_finetune
    from motionrep.eval.paper.streams import FlowSetItems

    def body(dev):
        ch, cw = _ints(crop)
        cfg = FlowFinetuneConfig(steps, batch_size, lr, warmup=warmup, crop=(ch, cw), overlap=overlap, frozen=frozen,
                                 width=width, workers=workers, seed=seed)  # fmt: skip
        if train_set == "synth":
            d = _synth(data, preset, "val", (train_videos, eval_videos), seed)
            train, vals = FlowSetItems(d.flow_train), {"synth": FlowSetItems(d.flow_val)}
        else:
            if data is None:
                raise ValueError("real flow datasets need --data PATH (the root holding them)")
            train = flow_dataset(train_set, data)
            names = [v.strip() for v in val_sets.split(",") if v.strip()]
            vals = {v: flow_dataset(v, data, val_split or None) for v in names}
        torch.manual_seed(seed)
        is_midway = not random_init and _is_midway(model)
        if is_midway:
            name, encoder, dynamics = _midway(model, dev)
            dynamics = baseline_dynamics(encoder) if random_dynamics else dynamics
        else:
            name, encoder = _encoder(model, weights, random_init, seed, dev)
            dynamics = baseline_dynamics(encoder)
        flow_model = FlowModel(encoder, dynamics, width)
        settings = {**vars(cfg), "train": train_set, "val": list(vals), "train_pairs": len(train),
                    "pretrained_dynamics": is_midway and not random_dynamics}  # fmt: skip
        return name, settings, flow_finetune(flow_model, train, vals, cfg, dev)

    _run(out, "flow-finetune", device, body)


def _is_midway(model: str) -> bool:
    """Whether ``model`` is a run or checkpoint of Midway with latent dynamics (from its stored config)."""
    from motionrep.config import parse_config
    from motionrep.train.checkpoint import load_checkpoint

    _, sep, path = model.partition("=")
    path = Path(path if sep else model)
    ckpt = path / "checkpoints" / "last.pt" if path.is_dir() else path
    if not ckpt.is_file():
        return False
    try:
        cfg = parse_config(load_checkpoint(ckpt)["config"])
    except Exception:  # not a motionrep checkpoint: the encoder loader reports it
        return False
    return cfg.method.name == "midway" and bool(
        getattr(cfg.method, "midway", None) and cfg.method.midway.latent_dynamics
    )


paper_app.command("seg-linear")(_seg_command(linear=True))
paper_app.command("seg-upernet")(_seg_command(linear=False))


def register(app: typer.Typer) -> None:
    app.add_typer(paper_app, name="paper-eval")
