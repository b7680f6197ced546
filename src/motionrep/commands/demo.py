"""``motionrep demo`` (provisional): generate the tiny synthetic world's val split and summarise it.

The end-to-end demo (pretrain, evaluate, report) replaces this in a later issue.
"""

from __future__ import annotations

from pathlib import Path

import typer

from motionrep.commands.synth import generate, print_summary


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        out: Path = typer.Option(Path("runs/demo"), "--out", help="Output folder."),
        quick: bool = typer.Option(False, "--quick", help="Two videos instead of the preset's count."),
    ) -> None:
        """Provisional demo: write the tiny synthetic world's val split to OUT and print its statistics."""
        try:
            stats = generate("tiny", ["val"], out, 2 if quick else None, "frames", 0)
        except (ValueError, OSError) as err:
            typer.echo(f"Error: {err}", err=True)
            raise typer.Exit(code=2) from None
        typer.echo(f"synthetic world (tiny preset, val split) written to {out}")
        print_summary(stats)
