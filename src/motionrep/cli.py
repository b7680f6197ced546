"""The ``motionrep`` command line: a thin typer app. Each command lives in ``motionrep.commands.<name>``
and registers itself through ``register(app)``; no logic here."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="motionrep",
    help="Dense visual representations for recognition and motion from unlabeled video.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# One entry per command module; each defines ``register(app: typer.Typer) -> None``.
COMMAND_MODULES = ["info", "track", "pretrain", "synth", "demo", "analyze", "eval", "export", "paper_eval"]

for _name in COMMAND_MODULES:
    importlib.import_module(f"motionrep.commands.{_name}").register(app)


def main() -> None:
    app()
