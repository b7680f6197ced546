"""Checkpoints: atomic writes (temporary file, then ``os.replace``), ``weights_only`` loading, RNG states,
``last.pt`` plus periodic ``step_XXXXXXXX.pt`` files with keep-last-k.

A checkpoint holds only tensors and plain python containers, so ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

LAST = "last.pt"
_PERIODIC = re.compile(r"^step_(\d{8})\.pt$")


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same directory, flush it to disk, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by this module (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy-global and python ``random`` states as tensors and plain containers."""
    np_name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the legacy global state)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos)},
        "numpy_gauss": [int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    has_gauss, cached = state["numpy_gauss"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], has_gauss, cached))  # noqa: NPY002
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointDir:
    """``RUN_DIR/checkpoints``: ``last.pt`` always, plus the ``keep_last`` most recent periodic checkpoints."""

    def __init__(self, root: str | Path, keep_last: int = 3):
        self.root = Path(root)
        self.keep_last = keep_last

    @property
    def last(self) -> Path:
        return self.root / LAST

    def periodic(self) -> list[Path]:
        """Periodic checkpoints, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if _PERIODIC.match(p.name))

    def save(self, state: dict[str, Any], step: int, periodic: bool) -> Path:
        """Write ``last.pt`` (and ``step_<step>.pt`` when ``periodic``) atomically; prune old periodic files."""
        if not periodic:
            atomic_save(state, self.last)
            return self.last
        path = self.root / f"step_{step:08d}.pt"
        atomic_save(state, path)
        tmp = self.root / f".{LAST}.{os.getpid()}.tmp"
        try:
            os.link(path, tmp)
        except OSError:  # file systems without hard links
            shutil.copyfile(path, tmp)
        os.replace(tmp, self.last)
        for old in self.periodic()[: max(len(self.periodic()) - self.keep_last, 0)]:
            old.unlink()
        return path
