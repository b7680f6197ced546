"""``motionrep eval``: score runs and checkpoints on recognition and motion; metrics.json, figures, report.html."""

from __future__ import annotations

from pathlib import Path

import typer


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip() and p.strip() != "none")


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_command(
        models: list[str] = typer.Argument(
            None, help="Run directories or checkpoint files (NAME=PATH to name one); a ViT preset with --random-init."
        ),
        suite: str = typer.Option("synth", help="synth, or a labelled dataset: see docs/datasets.md."),
        out: Path = typer.Option(..., "--out", help="Output directory for metrics.json, figures/ and report.html."),
        data: Path | None = typer.Option(None, help="A `motionrep synth` folder (synth), or the dataset root."),
        protocols: str = typer.Option("all", help="Comma-separated protocols to run (see docs/evaluation.md), or all."),
        baselines: str = typer.Option("random,pixels,dis,supervised", help="Comma-separated baselines, or none."),
        random_init: bool = typer.Option(False, help="Evaluate the given architectures with untrained weights."),
        weights: str = typer.Option("teacher", help="Encoder weights of a run: teacher (EMA) or student."),
        preset: str = typer.Option("small", help="Synthetic-world preset generated in memory (without --data)."),
        split: str = typer.Option("val", help="Evaluation split (val or test)."),
        train_videos: int = typer.Option(32, help="Synthetic train clips (probe training, memory bank)."),
        eval_videos: int = typer.Option(16, help="Synthetic evaluation clips."),
        flow_gap: int = typer.Option(1, help="Synthetic flow pairs: frames t and t + gap (exact flow)."),
        frame_step: int = typer.Option(4, help="Synthetic labelled frames and flow pairs every k-th frame."),
        size: int = typer.Option(224, help="Real datasets: frames resized to size x size."),
        max_images: int = typer.Option(2000, help="Real datasets: at most this many images per split."),
        seg_steps: int = typer.Option(300, help="Linear-probe steps."),
        flow_steps: int = typer.Option(300, help="Flow-probe steps."),
        flow_finetune: bool = typer.Option(False, help="Flow probe also finetunes the backbone."),
        supervised_steps: int = typer.Option(0, help="Supervised baseline steps (0: the runs' train.steps)."),
        memory_size: int = typer.Option(20480, help="In-context memory bank size (patches)."),
        tap: int = typer.Option(0, help="Encoder block to evaluate (1-indexed; 0: last)."),
        device: str = typer.Option("auto", help="auto, cpu or cuda."),
        threads: int = typer.Option(0, help="CPU threads for torch (0: torch's default)."),
        figures: bool = typer.Option(True, help="Write figures into the report."),
        seed: int = typer.Option(0, help="Seed of every probe and of the random initialisation."),
    ) -> None:
        """Evaluate models and baselines; write DIR/metrics.json (model -> {"<protocol>.<metric>": value}),
        DIR/figures/ and DIR/report.html."""
        from motionrep.eval import suite as S
        from motionrep.train import dist

        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        info = dist.init_distributed(device)
        try:
            cfg = S.SuiteConfig(
                protocols=S.PROTOCOLS if protocols == "all" else _split_list(protocols),
                baselines=_split_list(baselines),
                seg_steps=seg_steps,
                flow_steps=flow_steps,
                flow_finetune=flow_finetune,
                memory_size=memory_size,
                supervised_steps=supervised_steps or None,
                tap=tap or None,
                seed=seed,
            )
            if weights not in ("teacher", "student"):
                raise S.EvalError(f"--weights must be teacher or student, got {weights!r}")
            loaded = [S.load_model_arg(m, weights, random_init, seed) for m in models or []]
            if not loaded and not cfg.baselines:
                raise S.EvalError("nothing to evaluate: give a run or checkpoint, or keep some baselines")
            if suite == "synth":
                eval_data = S.synth_data(
                    preset, split, train_videos, eval_videos, frame_step, data_dir=data, seed=seed, flow_gap=flow_gap
                )
            else:
                from motionrep.data.labeled import load_suite

                if data is None:
                    raise S.EvalError(f"--suite {suite} needs --data PATH (the dataset root)")
                eval_data = load_suite(suite, data, size, max_images)
            metrics = S.run_suite(loaded, eval_data, cfg, out, info.device, figures)
        except (S.EvalError, ValueError, FileNotFoundError) as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        finally:
            dist.cleanup()
        if info.is_main:
            typer.echo(S.format_table(metrics))
            typer.echo(f"report: {out / 'report.html'}")
