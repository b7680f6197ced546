"""``motionrep info``: versions, device, threads and optional extras."""

from __future__ import annotations

import importlib.util
import json
import os
import platform

import typer

OPTIONAL = ["tensorboard", "timm", "ot", "cotracker", "faiss"]


def collect() -> dict:
    import torch

    import motionrep

    cuda = torch.cuda.is_available()
    return {
        "motionrep": motionrep.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cuda_devices": torch.cuda.device_count() if cuda else 0,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "extras": {name: importlib.util.find_spec(name) is not None for name in OPTIONAL},
    }


def register(app: typer.Typer) -> None:
    @app.command()
    def info(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
        """Show versions, device, threads and which optional extras are installed."""
        data = collect()
        if as_json:
            typer.echo(json.dumps(data))
            return
        for key, value in data.items():
            if isinstance(value, dict):
                value = ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in value.items())
            typer.echo(f"{key:>14}: {value}")
