"""Run logging: ``metrics.jsonl`` (one JSON object per logged step), optional TensorBoard, rank-0 progress bar."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from motionrep.config import ConfigError

METRICS = "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of ``RUN_DIR/metrics.jsonl`` in order."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def require_tensorboard() -> None:
    """Raise :class:`~motionrep.config.ConfigError` when ``train.tensorboard=true`` cannot be honoured."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("train.tensorboard=true needs TensorBoard: pip install 'motionrep[tensorboard]'")


class MetricsLogger:
    """Appends records to ``metrics.jsonl`` (and TensorBoard scalars when asked); a no-op when ``enabled`` is false
    (non-zero ranks)."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = False):
        self.path = Path(run_dir) / METRICS
        self.enabled = enabled
        self.tb = None
        if enabled and tensorboard:
            require_tensorboard()
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(run_dir) / "tb"))

    def truncate_after(self, step: int) -> None:
        """Drop records with ``step`` > ``step`` (written by a killed run after its last checkpoint)."""
        if self.enabled and self.path.is_file():
            kept = [r for r in read_metrics(self.path.parent) if r["step"] <= step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def progress_bar(total: int, initial: int, enabled: bool) -> tqdm:
    """A tqdm bar over optimiser steps, shown only on rank 0 and only when stderr is a terminal."""
    return tqdm(total=total, initial=initial, disable=not (enabled and sys.stderr.isatty()), unit="step", leave=True)
