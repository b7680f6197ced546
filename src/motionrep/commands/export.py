"""``motionrep export``: a run, checkpoint or official file to one ``.safetensors`` file with its JSON config."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_command(
        source: Path = typer.Argument(
            ..., help="A run directory, a motionrep checkpoint, or an official DINO / DINOv2 / Midway / MoSiC file."
        ),
        out: Path = typer.Option(..., "--out", help="Output file, FILE.safetensors."),
        dynamics: bool = typer.Option(False, "--dynamics", help="Also export Midway's dynamics modules."),
        weights: str = typer.Option("teacher", help="Encoder of a training checkpoint: teacher (EMA) or student."),
    ) -> None:
        """Export the encoder (and optionally Midway's dynamics) to safetensors with a JSON config; load it back
        with motionrep.models.weights.load_encoder(FILE)."""
        from motionrep.models.weights import WeightsError, export_model

        try:
            config = export_model(source, out, include_dynamics=dynamics, weights=weights)
        except WeightsError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        enc = config["encoder"]
        parts = "encoder + dynamics" if config["dynamics"] else "encoder"
        typer.echo(
            f"wrote {out}: {parts} of {config['source']} ({config['source_format']}, method {config['method']}, "
            f"{config['weights']} weights); ViT width {enc['embed_dim']}, depth {enc['depth']}, "
            f"{enc['num_heads']} heads, patch {enc['patch_size']}, {enc['num_register_tokens']} registers"
        )
