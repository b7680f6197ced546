"""Tracker speed (point·frames per second) and TAP-Vid accuracy against synthetic ground truth.

For each frame size, renders ``--clips`` validation clips of the synthetic world, tracks a ``--grid`` x ``--grid``
query grid from frame 0 with every backend, and scores it against the generator's exact tracks (δ_avg, occlusion
accuracy, average Jaccard; precision/recall of occlusion detection). Prints one JSON object (and writes it to
``--out`` if given).

    .venv/bin/python benchmarks/bench_trackers.py --sizes 64 256 --clips 4 --frames 8 --grid 16 --repeats 3

Wall times are the best of ``--repeats`` runs per clip after a warm-up run (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from motionrep.data.synth import SynthConfig, SynthWorld
from motionrep.tracking.base import get_tracker, grid_queries
from motionrep.tracking.ground_truth import GroundTruthTracker
from motionrep.tracking.metrics import tapvid_metrics

BACKENDS = {"gt": {}, "dis-ultrafast": {"preset": "ultrafast"}, "dis-fast": {"preset": "fast"}, "dis": {}, "lk": {}}
REPORTED = ("delta_avg", "occlusion_accuracy", "average_jaccard", "occlusion_precision", "occlusion_recall")


def _timed(tracker, frames: np.ndarray, queries: np.ndarray, repeats: int) -> tuple[tuple, float]:
    """The tracker's output and its best wall time over ``repeats`` runs (after one warm-up run)."""
    result = tracker(frames, queries)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        tracker(frames, queries)
        best = min(best, time.perf_counter() - start)
    return result, best


def bench_size(size: int, clips: int, frames: int, grid: int, seed: int, repeats: int, cotracker: str | None) -> dict:
    cfg = SynthConfig(size=size, frames=frames, track_grid=grid, videos={"train": 0, "val": clips, "test": 0})
    videos = [SynthWorld(cfg, "val", seed)[i] for i in range(clips)]
    queries = grid_queries(grid, size, size)
    truth = [v.track(queries) for v in videos]
    backends = dict(BACKENDS, **({"cotracker": {"checkpoint": cotracker}} if cotracker else {}))
    out = {}
    for name, settings in backends.items():
        results, seconds = [], 0.0
        for video in videos:
            tracker = GroundTruthTracker(video) if name == "gt" else get_tracker(name.split("-")[0], **settings)
            result, best = _timed(tracker, video.frames, queries, repeats)
            results.append(result)
            seconds += best
        pred, pred_vis = (np.stack(x) for x in zip(*results, strict=True))
        gt, gt_vis = (np.stack(x) for x in zip(*truth, strict=True))
        metrics = tapvid_metrics(pred, pred_vis, gt, gt_vis)
        out[name] = {
            "point_frames_per_s": round(clips * frames * len(queries) / seconds),
            "ms_per_clip": round(1000 * seconds / clips, 2),
            **{k: round(metrics[k], 4) for k in REPORTED},
        }
    out["gt_visible_fraction"] = round(float(np.mean([v.mean() for _, v in truth])), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per clip (best counts)")
    parser.add_argument("--cotracker", default=None, help="local CoTracker checkpoint (optional)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "cv2_threads": cv2.getNumThreads(),
            "torch_threads": torch.get_num_threads(),
            "opencv": cv2.__version__,
            "platform": platform.platform(),
            "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the shared machine skews timings
        },
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "cotracker")},
        "results": {
            str(size): bench_size(size, args.clips, args.frames, args.grid, args.seed, args.repeats, args.cotracker)
            for size in args.sizes
        },
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
