"""``motionrep demo``: the end-to-end demo (``make demo``); the work is :func:`motionrep.demo.run_demo`."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        out: Path = typer.Option(Path("runs/demo"), "--out", help="Output folder."),
        quick: bool = typer.Option(False, "--quick", help="Smaller budget (about 2 minutes); numbers not meaningful."),
        seed: int = typer.Option(0, "--seed", help="Seed of the world, the training runs, the probes and random init."),
        resume: bool = typer.Option(False, "--resume", help="Continue a demo in OUT, keeping its finished stages."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Delete the demo outputs in OUT and start afresh."),
        budget: str = typer.Option("", "--budget", hidden=True, help="full, quick or micro (tests)."),
    ) -> None:
        """Synthetic world -> Midway and DINO pretraining (same budget) -> evaluation with a random-init baseline;
        writes OUT/report.html and OUT/metrics.json and prints the headline."""
        from motionrep.config import ConfigError
        from motionrep.demo import BUDGETS, DemoError, format_headline, run_demo
        from motionrep.eval.suite import EvalError
        from motionrep.train.engine import DatasetError, NonFiniteLossError, RunDirError

        name = budget or ("quick" if quick else "full")
        if name not in BUDGETS:
            typer.echo(f"error: unknown budget {name!r}; choose one of {', '.join(BUDGETS)}", err=True)
            raise typer.Exit(2)
        typer.echo(f"motionrep demo: budget {name}, seed {seed}, output {out}")
        try:
            result = run_demo(out, BUDGETS[name], seed, resume, overwrite, log=typer.echo)
        except (DemoError, ConfigError, EvalError, DatasetError, NonFiniteLossError, RunDirError, OSError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo(f"\ninterrupted; continue with: motionrep demo --out {out} --resume", err=True)
            raise typer.Exit(130) from None
        typer.echo("\n" + format_headline(result.headline, result.zero_flow_epe))
        verdict = "yes" if result.holds else "NO"
        typer.echo(f"Midway better on motion (EPE) and at least as good on recognition (mIoU): {verdict}")
        minutes = sum(s["wall"] for s in result.seconds.values()) / 60
        typer.echo(f"seed {seed}, {minutes:.1f} min; details in {out / 'demo.json'}")
        typer.echo(f"report: {result.report}")
