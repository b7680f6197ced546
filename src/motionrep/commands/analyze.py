"""``motionrep analyze perturb RUN_OR_CHECKPOINT --out DIR``: forwarded feature perturbation of a Midway model on
the synthetic world (heatmaps, peak scores, tracking along ground-truth tracks, figures)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

analyze_app = typer.Typer(help="Analyses of trained models.", no_args_is_help=True)


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@analyze_app.command()
def perturb(
    run: Path = typer.Argument(..., help="Midway run directory or checkpoint file."),
    out: Path = typer.Option(..., "--out", help="Output directory (metrics.json and figures)."),
    level: int = typer.Option(None, help="Objective level to read out (default: the highest)."),
    samples: int = typer.Option(16, help="Random tangent draws per source token (k)."),
    site: str = typer.Option("encoder", help="Perturb the encoder features z (encoder) or backward features v."),
    top_k: int = typer.Option(5, help="Heatmap candidates re-ranked by feature similarity when tracking."),
    videos: int = typer.Option(4, help="Synthetic clips to analyse."),
    split: str = typer.Option("val", help="Synthetic-world split."),
    preset: str = typer.Option(None, help="Synthetic-world preset (default: the run's data.synth_preset)."),
    gap: int = typer.Option(
        4, help="Frames between the two frames of a pair (and between tracking steps); pick it so content moves."
    ),
    figures: int = typer.Option(2, help="Clips that get heatmap and track figures."),
    seed: int = typer.Option(0, help="Seed of the random tangents."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
) -> None:
    """Perturb every source token of consecutive frame pairs and score where the change arrives."""
    import torch

    from motionrep.config import ConfigError
    from motionrep.data.synth import SynthWorld, synth_preset
    from motionrep.eval.perturbation import PerturbConfig, analyze_synthetic, load_midway

    if videos < 1 or gap < 1 or figures < 0:
        _fail("--videos and --gap must be >= 1 and --figures >= 0", code=2)
    try:
        method = load_midway(run, torch.device(device))
        cfg = PerturbConfig(num_samples=samples, level=level, site=site, top_k=top_k)
        cfg.validate(method.cfg.method.midway.objective_levels)
        world = SynthWorld(synth_preset(preset or method.cfg.data.synth_preset), split, num_videos=videos)
        out.mkdir(parents=True, exist_ok=True)
        metrics = analyze_synthetic(method, world, cfg, out, gap=gap, figures=figures, seed=seed)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as e:
        _fail(str(e))
    level_used = cfg.level or method.cfg.method.midway.objective_levels[-1]
    record = {"run": str(run), "level": level_used, "site": site, "samples": samples, "videos": videos, **metrics}
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    keys = ("moved_fraction", "peak_within1", "peak_within1_moved", "peak_identity", "track_top1_acc")
    for key in (*keys, "track_topk_sim_acc", "track_nn_acc"):
        value = metrics[key]
        typer.echo(f"{key:>20}: " + ("n/a (no token moved)" if value is None else f"{value:.3f}"))
    typer.echo(f"metrics and figures in {out}")


def register(app: typer.Typer) -> None:
    app.add_typer(analyze_app, name="analyze")
