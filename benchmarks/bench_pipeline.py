"""Midway-style data pipeline throughput: frame pairs per second from H.264 mp4 files.

Each pair: decode 2 frames (gap 15-30) → motion crops (2 × 224²) → initial crop → 2 global crops (224²) and
``n_local`` local crops (96²) per frame → DINO photometric transforms. Also times each stage in one process, and
the CPU miniature (64²/32² crops of the in-memory synthetic world, ``small`` preset).

    .venv/bin/python benchmarks/bench_pipeline.py --out bench_pipeline.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from motionrep.data.catalog import Catalog, build_catalog, video_folder
from motionrep.data.datasets import PairDataset
from motionrep.data.loader import build_loader
from motionrep.data.sampling import PairSampler
from motionrep.data.sources import write_video
from motionrep.data.views import PairViewsConfig, render, sample_pair_views


def make_videos(folder: Path, count: int, frames: int, width: int, height: int) -> None:
    """Textured, moving 30 fps H.264 videos (written once; reused when present)."""
    folder.mkdir(parents=True, exist_ok=True)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    noise = np.random.default_rng(0).integers(0, 40, (height, width, 3)).astype(np.float32)
    for v in range(count):
        path = folder / f"drive_{v:02d}.mp4"
        if path.exists():
            continue
        clip = np.empty((frames, height, width, 3), np.uint8)
        for t in range(frames):
            x, y = xs - 3.0 * t, ys - 0.5 * t
            base = np.stack([np.sin(x / 23 + v), np.cos(y / 17 - x / 41), np.sin((x + y) / 31)], -1)
            clip[t] = np.clip(110 + 90 * base + noise, 0, 255).astype(np.uint8)
        write_video(path, clip, fps=30, gop=30, crf=23)


def stage_times(dataset: PairDataset, pairs: int) -> dict[str, float]:
    """CPU milliseconds per pair (process time: robust to other jobs on the machine) of decoding, geometric
    rendering and photometric transforms, in one process with one thread."""
    rng = np.random.default_rng(0)
    cfg = dataset.views
    decode = render_t = photo = 0.0
    for k in range(pairs):
        entry = dataset.catalog[k % len(dataset.catalog)]
        t0 = time.process_time()
        with entry.open() as source:
            idx = dataset.sampler.sample(source.num_frames, rng)[0]
            frames = torch.from_numpy(source.read(idx)).permute(0, 3, 1, 2)
        t1 = time.process_time()
        geo = sample_pair_views(rng, (frames.shape[-1], frames.shape[-2]), cfg)
        motion = render(frames, geo.motion, cfg.interpolation)
        globals_ = torch.stack([render(frames, v, cfg.interpolation) for v in geo.globals])
        locals_ = torch.cat([render(frames[f : f + 1], v, cfg.interpolation) for f in range(2) for v in geo.locals[f]])
        t2 = time.process_time()
        dataset.t1(motion[:1]), dataset.t2(motion[1:]), dataset.t1(globals_[0]), dataset.t2(globals_[1])
        dataset.tl(locals_)
        t3 = time.process_time()
        decode, render_t, photo = decode + t1 - t0, render_t + t2 - t1, photo + t3 - t2
    return {k: 1000 * v / pairs for k, v in {"decode": decode, "render": render_t, "photometric": photo}.items()}


def synthetic_times(videos: int) -> dict[str, float]:
    """CPU miniature: CPU ms per pair on the ``small`` world, first visit (render) and second epoch (frame cache)."""
    catalog = build_catalog("synthetic", preset="small", split="train", num_videos=videos)
    dataset = PairDataset(catalog, PairSampler((1, 3)), PairViewsConfig.miniature(), seed=0)
    out = {}
    for epoch, key in enumerate(["first_visit", "cached"]):
        start = time.process_time()
        for index in range(videos):
            dataset[(epoch, index)]
        out[key] = 1000 * (time.process_time() - start) / videos
    return out


def loader_rate(dataset: PairDataset, batch_size: int, workers: int, batches: int) -> float:
    """Pairs per second delivered by the loader after one warm-up batch."""
    loader = build_loader(dataset, batch_size=batch_size, workers=workers, seed=0, persistent_workers=False)
    it = loader.batches()
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/motionrep_bench_videos"))
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--n-local", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    make_videos(args.data, args.videos, args.frames, args.width, args.height)
    views = PairViewsConfig(n_local=args.n_local)
    files = video_folder(args.data)
    catalog = Catalog(files.name, files.root, files.layout, files.entries * 16)  # many visits, few files to encode
    result = {
        "machine": {"cpus": torch.get_num_threads(), "platform": platform.platform(), "torch": torch.__version__},
        "video": {"count": args.videos, "frames": args.frames, "size": [args.width, args.height], "codec": "h264"},
        "views": {"motion": 224, "global": 224, "local": 96, "n_local_per_frame": args.n_local},
        "workers": args.workers,
        "batch_size": args.batch_size,
    }
    for repeats in (1, 5):
        dataset = PairDataset(catalog, PairSampler((15, 30), repeats=repeats), views, seed=0)
        if repeats == 1:
            stage_times(dataset, 2)  # warm-up (kornia, codec)
            result["cpu_ms_per_pair_one_process"] = stage_times(dataset, 8)
        result[f"pairs_per_s_R{repeats}"] = loader_rate(dataset, args.batch_size, args.workers, args.batches)
    result["synthetic_miniature_cpu_ms_per_pair"] = synthetic_times(32)
    result["load_average_1min_before"] = load_before
    result["load_average_1min_after"] = os.getloadavg()[0]
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
