"""The synthetic video world: a deterministic, indexable collection of clips with exact ground truth.

Public API (the rest of motionrep codes against these names): :data:`CLASS_NAMES`, :data:`IGNORE_INDEX`,
:class:`SynthConfig`, :func:`synth_preset`, :data:`SPLIT_SEEDS`, :class:`SynthVideo`, :class:`SynthWorld`,
:func:`write_split`, :func:`load_split`. Clip ``i`` of a split depends only on (config, split, seed, i).
"""

from __future__ import annotations

from collections.abc import Sequence

from motionrep.data.synth_io import SynthSplit, load_split, write_split
from motionrep.data.synth_render import SynthVideo, render, track_points
from motionrep.data.synth_scene import (
    CLASS_NAMES,
    IGNORE_INDEX,
    NUM_STUFF,
    PRESETS,
    SPLIT_SEEDS,
    Scene,
    SynthConfig,
    sample_scene,
    scene_rng,
    synth_preset,
)

__all__ = [
    "CLASS_NAMES",
    "IGNORE_INDEX",
    "NUM_STUFF",
    "PRESETS",
    "SPLIT_SEEDS",
    "Scene",
    "SynthConfig",
    "SynthSplit",
    "SynthVideo",
    "SynthWorld",
    "load_split",
    "synth_preset",
    "track_points",
    "write_split",
]


class SynthWorld(Sequence):
    """``num_videos`` clips of one split; ``world[i]`` is rendered on demand and is the same on every call."""

    def __init__(self, config: SynthConfig, split: str = "train", seed: int = 0, num_videos: int | None = None):
        if split not in SPLIT_SEEDS:
            raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_SEEDS)}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.config, self.split, self.seed = config, split, int(seed)
        self.num_videos = config.videos.get(split, 0) if num_videos is None else int(num_videos)
        if self.num_videos < 0:
            raise ValueError(f"num_videos must be >= 0, got {num_videos}")

    def __len__(self) -> int:
        return self.num_videos

    def _index(self, i: int) -> int:
        if not -self.num_videos <= i < self.num_videos:
            raise IndexError(f"video index {i} out of range for {self.num_videos} videos")
        return i % self.num_videos

    def name(self, i: int) -> str:
        return f"{self.split}_{self._index(i):05d}"

    def scene(self, i: int) -> Scene:
        """The sampled parameters of clip ``i`` (cheap: nothing is rendered)."""
        return sample_scene(self.config, scene_rng(self.split, self.seed, self._index(i)))

    def __getitem__(self, i: int) -> SynthVideo:  # type: ignore[override]
        return render(self.scene(i), self.name(i), self.config.track_grid)
