"""``motionrep pretrain CONFIG [key=value ...] --out RUN_DIR [--resume] [--dry-run]``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from motionrep.config import ConfigError, load_config, to_yaml


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    @app.command()
    def pretrain(
        config: str = typer.Argument(..., help="Preset name (see motionrep/configs) or path to a YAML file."),
        overrides: list[str] = typer.Argument(None, help="Dotted overrides, e.g. train.steps=100 optim.lr=1e-3."),
        out: Path = typer.Option(None, "--out", help="Run directory (config.yaml, metrics.jsonl, checkpoints/)."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from checkpoints/last.pt."),
        dry_run: bool = typer.Option(
            False, "--dry-run", help="Build everything, train nothing; print the config and parameter counts."
        ),
    ) -> None:
        """Pre-train a method (single process, or under torchrun for DDP)."""
        from motionrep.train import dist, engine

        try:
            cfg = load_config(config, overrides or [])
        except ConfigError as e:
            _fail(str(e), code=2)
        if dry_run:
            typer.echo(to_yaml(cfg))
            try:
                sizes = engine.dry_run(cfg, warn=lambda msg: typer.echo(f"warning: {msg}", err=True))
            except ConfigError as e:  # e.g. a method's initial weights are missing
                _fail(str(e), code=2)
            typer.echo(json.dumps({"params": sizes}))
            return
        if out is None:
            _fail("--out RUN_DIR is required (or use --dry-run)", code=2)
        try:
            last = engine.train(cfg, out, resume=resume)
            if dist.is_main() and last:
                typer.echo(f"done: step {last['step']}, loss {last['loss']:.4f}; run in {out}")
        except (ConfigError, engine.RunDirError, engine.DatasetError, engine.NonFiniteLossError) as e:
            _fail(str(e))
        except KeyboardInterrupt:
            _fail(f"interrupted; continue from the last checkpoint with: --out {out} --resume", code=130)
        finally:
            dist.cleanup()
