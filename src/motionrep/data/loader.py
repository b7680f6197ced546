"""The training DataLoader: seeded shuffling shared by all ranks, exact mid-epoch resume, worker set-up.

:class:`ResumableSampler` is a seeded ``DistributedSampler`` (every rank draws the same permutation for an epoch
and takes its strided share) that yields ``(epoch, index)`` keys, so an item depends only on (seed, epoch, index)
even with persistent workers. :class:`Loader` wraps the DataLoader, counts the batches it hands out, and exposes
``state_dict() = {"epoch", "batches"}``: after ``load_state_dict`` the next batch is exactly the one an uninterrupted
run would have produced next. It also accumulates the skipped (unreadable) videos reported by the batches.
"""

from __future__ import annotations

import functools
import multiprocessing
import random
from collections.abc import Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from motionrep.data.datasets import VideoDataset


class ResumableSampler(Sampler[tuple[int, int]]):
    """Seeded, rank-sharded, resumable order over ``range(n)``; yields ``(epoch, index)``.

    Each epoch permutes ``range(n)`` with seed ``(seed, epoch)`` (identity when ``shuffle`` is False), trims
    (``drop_last``) or wraps it to a multiple of ``world_size``, and keeps positions ``rank, rank + world, ...``;
    the first ``skip`` of this rank's keys are left out (resume).
    """

    def __init__(
        self, n: int, seed: int = 0, shuffle: bool = True, drop_last: bool = True, world_size: int = 1, rank: int = 0
    ) -> None:
        if n <= 0:
            raise ValueError("cannot sample from an empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if drop_last and n < world_size:
            raise ValueError(f"{n} items cannot be shared by {world_size} ranks with drop_last")
        self.n, self.seed, self.shuffle, self.drop_last = n, seed, shuffle, drop_last
        self.world_size, self.rank = world_size, rank
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def per_rank(self) -> int:
        return self.n // self.world_size if self.drop_last else -(-self.n // self.world_size)

    def order(self) -> torch.Tensor:
        """This rank's full index order for the current epoch (before skipping)."""
        if self.shuffle:
            gen = torch.Generator().manual_seed(
                int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
            )
            order = torch.randperm(self.n, generator=gen)
        else:
            order = torch.arange(self.n)
        total = self.per_rank() * self.world_size
        order = order[:total] if total <= self.n else torch.cat([order, order[: total - self.n]])
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for index in self.order()[self.skip :].tolist():
            yield self.epoch, index

    def __len__(self) -> int:
        return max(self.per_rank() - self.skip, 0)


def worker_context(workers: int) -> str | None:
    """Start method for data-loader workers: a fresh ``forkserver`` (``spawn`` where missing), never ``fork``.

    Forking a trainer that already runs threads (progress-bar monitors, OpenMP and OpenCV pools, process-group
    transports) can leave a lock held in the child and hang the worker; this is one source of truth for every loader.
    """
    if workers == 0:
        return None
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _init_worker(worker_id: int, threads: int) -> None:
    """Per-worker decoding threads and seeds derived from the loader's seeded base seed."""
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002 (third-party code may use the legacy global RNG)
    random.seed(seed)


class Loader:
    """Iterable over batches, epoch after epoch, with an exact resume position.

    ``for batch in loader`` runs the rest of the current epoch and then advances to the next;
    :meth:`batches` yields forever. Batch size counts samples (pairs or clips); a dataset item holding ``R``
    samples (repeated pair sampling) makes each batch hold ``batch_size / R`` items.
    """

    def __init__(self, dataloader: DataLoader, sampler: ResumableSampler, items_per_batch: int) -> None:
        self.dataloader = dataloader
        self.sampler = sampler
        self.items_per_batch = items_per_batch
        self.epoch = 0
        self.position = 0
        self.skipped_videos: set[str] = set()
        self.skip_events = 0

    def __len__(self) -> int:
        """Batches per full epoch on this rank."""
        full = self.sampler.per_rank()
        return full // self.items_per_batch if self.dataloader.drop_last else -(-full // self.items_per_batch)

    def __iter__(self) -> Iterator:
        self.sampler.set_epoch(self.epoch, self.position * self.items_per_batch)
        for batch in self.dataloader:
            self.position += 1
            self.skip_events += len(batch.skipped)
            self.skipped_videos.update(batch.skipped)
            yield batch
        self.epoch += 1
        self.position = 0

    def batches(self) -> Iterator:
        """Batches forever (epochs advance automatically)."""
        if len(self) == 0:
            raise RuntimeError("the loader yields no batch: the dataset is smaller than one batch per rank")
        while True:
            yield from self

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches": self.position, "skip_events": self.skip_events}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["batches"])
        self.skip_events = int(state.get("skip_events", 0))

    def data_errors(self) -> dict[str, object]:
        """For the run log: how many replacements happened and which videos were unreadable."""
        return {"skip_events": self.skip_events, "skipped_videos": sorted(self.skipped_videos)}


def build_loader(
    dataset: VideoDataset,
    batch_size: int,
    workers: int = 0,
    seed: int = 0,
    distributed: bool = False,
    shuffle: bool = True,
    drop_last: bool = True,
    threads_per_worker: int = 1,
    pin_memory: bool | None = None,
    prefetch_factor: int = 2,
    persistent_workers: bool = True,
) -> Loader:
    """A :class:`Loader` over ``dataset`` with ``batch_size`` samples per batch (per rank when ``distributed``).

    Workers use ``threads_per_worker`` torch/OpenCV threads; pinned memory defaults to on when CUDA is available.
    """
    from motionrep.train import dist

    per_item = dataset.samples_per_item
    if batch_size % per_item:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the {per_item} samples per dataset item")
    world, rank = (dist.world_size(), dist.rank()) if distributed else (1, 0)
    sampler = ResumableSampler(len(dataset), seed, shuffle, drop_last, world, rank)
    items = batch_size // per_item
    if drop_last and sampler.per_rank() < items:
        raise ValueError(
            f"{len(dataset)} videos give {sampler.per_rank()} items per rank, fewer than one batch of {items}; "
            "lower the batch size or add videos"
        )
    loader = DataLoader(
        dataset,
        batch_size=items,
        sampler=sampler,
        num_workers=workers,
        collate_fn=dataset.collate,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last,
        worker_init_fn=functools.partial(_init_worker, threads=threads_per_worker) if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=persistent_workers and workers > 0,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        multiprocessing_context=worker_context(workers),
    )
    return Loader(loader, sampler, items)
