"""Map-style training datasets over a :class:`~motionrep.data.catalog.Catalog`.

An item is keyed by ``index`` or ``(epoch, index)`` (the loader's sampler yields the latter) and is a pure function
of ``(seed, epoch, index)``: geometry from a numpy generator, photometric draws from a torch generator state forked
from the same seed, whichever worker computes it. An item is already a small batch (``PairBatch`` of ``repeats``
pairs, ``ClipBatch`` of one clip); :meth:`collate` concatenates items.

An unreadable, corrupt, truncated or too-short video is skipped with a warning naming the file and replaced by
another video drawn from the item's generator; the replacement is recorded in the batch's ``skipped`` field.
After ``max_retries`` consecutive failures the item raises a clear error, so a broken dataset never hangs or yields
an empty epoch; a catalog with no usable video fails at construction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

from motionrep.data.batch import ClipBatch, PairBatch
from motionrep.data.catalog import Catalog, DatasetLayoutError, VideoEntry
from motionrep.data.photometric import PhotometricConfig, global_transform_1, global_transform_2, local_transform
from motionrep.data.sampling import ClipSampler, PairSampler, VideoTooShortError
from motionrep.data.sources import VideoReadError, VideoSource
from motionrep.data.views import (
    ClipViewsConfig,
    PairViewsConfig,
    render,
    render_clip,
    sample_clip_view,
    sample_pair_views,
    transform_tracks,
    transforms_tensor,
)
from motionrep.ops.points import grid_points

log = logging.getLogger(__name__)

Tracker = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""frames uint8 (T, H, W, 3), queries (N, 2) (x, y) on frame 0 → tracks (T, N, 2) float, visible (T, N) bool."""

T = TypeVar("T", PairBatch, ClipBatch)
_SKIPPABLE = (VideoReadError, VideoTooShortError)


class VideoDataset(Dataset, Generic[T]):
    """Shared item keying, seeding, bad-video skipping and the start-up usability check."""

    batch_type: type[T]
    samples_per_item: int = 1

    def __init__(self, catalog: Catalog, seed: int, max_retries: int, decode_threads: int, min_frames: int) -> None:
        self.catalog = catalog
        self.seed = seed
        self.max_retries = max_retries
        self.decode_threads = decode_threads
        self.bad_videos: set[str] = set()
        self._check_usable(min_frames)

    def _check_usable(self, min_frames: int) -> None:
        for entry in self.catalog:
            try:
                with entry.open(self.decode_threads) as source:
                    if source.num_frames >= min_frames:
                        return
                    log.warning("skipping %s: %d frames, need %d", entry.describe(), source.num_frames, min_frames)
            except VideoReadError as err:
                self._mark_bad(entry, err)
        raise DatasetLayoutError(
            f"no usable video among the {len(self.catalog)} of {self.catalog.name} under {self.catalog.root} "
            f"(each was unreadable or shorter than {min_frames} frames); expected {self.catalog.layout}"
        )

    def _mark_bad(self, entry: VideoEntry, err: Exception) -> None:
        name = entry.describe()
        if name not in self.bad_videos:
            self.bad_videos.add(name)
            log.warning("skipping video %s: %s", name, err)

    def __len__(self) -> int:
        return len(self.catalog)

    def _locate(self, index: int) -> tuple[int, int | None]:
        """The video of item ``index`` and, for per-frame datasets, its source frame."""
        return index, None

    def __getitem__(self, key: int | tuple[int, int]) -> T:
        epoch, index = (0, key) if isinstance(key, int | np.integer) else key
        rng = np.random.default_rng([self.seed, epoch, index])
        item_index, skipped = int(index), []
        for _ in range(self.max_retries):
            video, start = self._locate(item_index)
            entry = self.catalog[video]
            if entry.describe() not in self.bad_videos:
                try:
                    with entry.open(self.decode_threads) as source:
                        item = self._make(source, video, rng, start)
                    item.skipped = tuple(skipped)
                    return item
                except _SKIPPABLE as err:
                    self._mark_bad(entry, err)
            skipped.append(entry.describe())
            item_index = int(rng.integers(len(self)))
        raise RuntimeError(
            f"{self.max_retries} videos in a row were unusable while building item {index} of {self.catalog.name} "
            f"under {self.catalog.root} ({', '.join(skipped[-3:])}, ...); check the dataset ({self.catalog.layout})"
        )

    def _make(self, source: VideoSource, video: int, rng: np.random.Generator, start: int | None) -> T:
        raise NotImplementedError

    def collate(self, items: list[T]) -> T:
        return self.batch_type.cat(items)


def _torch_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**62))


class PairDataset(VideoDataset[PairBatch]):
    """Midway/DINO frame pairs: ``sampler.repeats`` pairs per video visit with the views of ``views``.

    ``per_frame=True`` makes every frame that can start a pair one item (official Walking Tours loader: each frame is
    a source once per epoch, target ``gap`` frames later); it reads every video's length at construction.
    """

    batch_type = PairBatch

    def __init__(
        self,
        catalog: Catalog,
        sampler: PairSampler,
        views: PairViewsConfig,
        seed: int = 0,
        photometric: PhotometricConfig = PhotometricConfig(),
        max_retries: int = 10,
        decode_threads: int = 1,
        per_frame: bool = False,
    ) -> None:
        self.sampler = sampler
        self.views = views
        self.samples_per_item = sampler.repeats
        self.t1, self.t2, self.tl = (f(photometric) for f in (global_transform_1, global_transform_2, local_transform))
        super().__init__(catalog, seed, max_retries, decode_threads, sampler.min_frames())
        self._starts: np.ndarray | None = None
        if per_frame:
            if sampler.repeats != 1:
                raise ValueError("per-frame pair sampling draws one pair per source frame: use repeats=1")
            self._starts = np.cumsum([max(n - sampler.gap[0], 0) for n in self._frame_counts()])

    def _frame_counts(self) -> list[int]:
        """Frames of every video (0 for unreadable ones, which are marked bad)."""
        counts = []
        for entry in self.catalog:
            try:
                with entry.open(self.decode_threads) as source:
                    counts.append(source.num_frames)
            except VideoReadError as err:
                self._mark_bad(entry, err)
                counts.append(0)
        return counts

    def __len__(self) -> int:
        return len(self.catalog) if self._starts is None else int(self._starts[-1])

    def _locate(self, index: int) -> tuple[int, int | None]:
        if self._starts is None:
            return index, None
        video = int(np.searchsorted(self._starts, index, side="right"))
        return video, index - (int(self._starts[video - 1]) if video else 0)

    def _make(self, source: VideoSource, video: int, rng: np.random.Generator, start: int | None) -> PairBatch:
        if start is None:
            pairs = self.sampler.sample(source.num_frames, rng)
        else:
            pairs = self.sampler.sample_at(source.num_frames, start, rng)
        frames = torch.from_numpy(source.read(pairs.reshape(-1))).permute(0, 3, 1, 2)
        frame_wh = (frames.shape[-1], frames.shape[-2])
        mode = self.views.interpolation
        motion, globals_, locals_, tfs = [], [], [], ([], [], [])
        for pair in frames.view(len(pairs), 2, *frames.shape[1:]):
            geo = sample_pair_views(rng, frame_wh, self.views)
            motion.append(render(pair, geo.motion, mode))
            globals_.append(torch.stack([render(pair, v, mode) for v in geo.globals], dim=1))
            locals_.append(
                torch.stack([torch.cat([render(pair[k : k + 1], v, mode) for v in geo.locals[k]]) for k in range(2)])
            )
            tfs[0].append(transforms_tensor([geo.motion.transform] * 2))
            tfs[1].append(transforms_tensor([v.transform for v in geo.globals] * 2).view(2, 2, 4))
            tfs[2].append(transforms_tensor([v.transform for side in geo.locals for v in side]).view(2, -1, 4))
        motion, globals_, locals_ = torch.stack(motion), torch.stack(globals_), torch.stack(locals_)
        if self.views.photometric:
            motion, globals_, locals_ = self._photometric(motion, globals_, locals_, _torch_seed(rng))
        return PairBatch(
            motion=motion,
            globals=globals_,
            locals=locals_,
            motion_tf=torch.stack(tfs[0]),
            globals_tf=torch.stack(tfs[1]),
            locals_tf=torch.stack(tfs[2]),
            video=torch.full((len(pairs),), video, dtype=torch.long),
            frames=torch.from_numpy(pairs).long(),
        )

    def _photometric(self, motion: torch.Tensor, globals_: torch.Tensor, locals_: torch.Tensor, seed: int):
        """Transform 1 on frame t's motion crop and every first global crop, transform 2 on frame t+gap's motion crop
        and every second global crop, the local transform on local crops; independent draws per image."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = [
                _apply(tf, [motion[:, c], globals_[:, :, c].flatten(0, 1)]) for c, tf in enumerate((self.t1, self.t2))
            ]
            motion = torch.stack([out[0][0], out[1][0]], dim=1)
            globals_ = torch.stack([out[0][1], out[1][1]], dim=1).unflatten(0, globals_.shape[:2])
            locals_ = self.tl(locals_.flatten(0, 2)).view(locals_.shape)
        return motion, globals_, locals_


def _apply(transform: torch.nn.Module, parts: list[torch.Tensor]) -> list[torch.Tensor]:
    """``transform`` on each image batch of ``parts``, in one call when their image sizes agree."""
    if any(p.shape[1:] != parts[0].shape[1:] for p in parts):
        return [transform(p) for p in parts]
    return list(transform(torch.cat(parts)).split([len(p) for p in parts]))


class ClipDataset(VideoDataset[ClipBatch]):
    """MoSiC clips with point tracks, one clip per video visit.

    Tracks come from ``tracker`` on the original frames (or, when ``tracker`` is None, from the source's exact
    ``track`` — the synthetic world) for the query grid of the cropped frame 0 mapped back to the original frame,
    then move into the view analytically.
    """

    batch_type = ClipBatch

    def __init__(
        self,
        catalog: Catalog,
        sampler: ClipSampler,
        views: ClipViewsConfig,
        tracker: Tracker | None = None,
        seed: int = 0,
        max_retries: int = 10,
        decode_threads: int = 1,
    ) -> None:
        if tracker is None and any(e.kind != "synth" for e in catalog):
            raise ValueError(
                f"{catalog.name}: real videos need a tracker (ground truth exists only for synthetic data)"
            )
        self.sampler = sampler
        self.views = views
        self.tracker = tracker
        super().__init__(catalog, seed, max_retries, decode_threads, sampler.min_frames())

    def _track(self, source: VideoSource, indices: np.ndarray, frames: np.ndarray, queries: np.ndarray):
        if self.tracker is None:
            return source.track(indices, queries)
        return self.tracker(frames, queries)

    def _make(self, source: VideoSource, video: int, rng: np.random.Generator, start: int | None) -> ClipBatch:
        indices = self.sampler.sample(source.num_frames, rng)
        frames = source.read(indices)
        view = sample_clip_view(rng, (frames.shape[2], frames.shape[1]), self.views)
        tf = view.transform
        size = (self.views.size, self.views.size)
        queries = tf.inverse().apply(grid_points(self.views.grid, size))
        tracks, visible = self._track(source, indices, frames, queries.numpy())
        tracks, in_crop = transform_tracks(torch.as_tensor(tracks, dtype=torch.float32), tf, size)
        clip = render_clip(torch.from_numpy(frames).permute(0, 3, 1, 2), view, self.views.interpolation)
        return ClipBatch(
            frames=clip[None],
            tracks=tracks[None],
            visible=torch.as_tensor(visible, dtype=torch.bool)[None],
            in_crop=in_crop[None],
            transform=transforms_tensor([tf]),
            video=torch.tensor([video]),
            indices=torch.from_numpy(indices).long()[None],
        )
