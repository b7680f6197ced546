"""Synthetic world: generation speed on one thread, and the quality numbers quoted in docs/datasets.md.

Speed: clips rendered in memory (frames, labels, forward/backward flow, valid masks, grid tracks), frames per second
of wall time and of process CPU time (the CPU figure is robust to other load on a shared machine). Quality: the
photometric error of warping frame t+1 back by the ground-truth flow (valid pixels, 0..255 units), and the mIoU of a
least-squares linear classifier on raw pixel colours (train clips -> val clips).

    .venv/bin/python benchmarks/bench_synth.py [--picture docs/img/synth_clip.png] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from motionrep.data.synth import CLASS_NAMES, SynthWorld, synth_preset  # noqa: E402
from motionrep.ops.points import pixel_to_grid  # noqa: E402


def speed(preset: str, size: int, clips: int) -> dict:
    config = dataclasses.replace(synth_preset(preset), size=size)
    world = SynthWorld(config, "train", num_videos=clips + 1)
    world[clips]  # warm-up: texture bank, imports
    wall, cpu = time.perf_counter(), time.process_time()
    frames = sum(len(world[i].frames) for i in range(clips))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "preset": preset,
        "size": size,
        "frames_per_clip": config.frames,
        "clips": clips,
        "frames_per_s_wall": round(frames / wall, 1),
        "frames_per_s_cpu": round(frames / cpu, 1),
    }


def warp_error(preset: str, clips: int) -> dict:
    """Mean |I_t - warp(I_{t+1}, flow)| on valid pixels, with the preset's pixel noise and without it."""
    out = {}
    for noise in (None, 0.0):
        config = synth_preset(preset) if noise is None else dataclasses.replace(synth_preset(preset), noise=noise)
        errors = []
        for video in (SynthWorld(config, "val", num_videos=clips)[i] for i in range(clips)):
            img = torch.from_numpy(video.frames).permute(0, 3, 1, 2).float()
            _, _, h, w = img.shape
            ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
            pos = torch.stack([xs, ys], -1)[None] + torch.from_numpy(video.flow).permute(0, 2, 3, 1)
            warped = F.grid_sample(img[1:], pixel_to_grid(pos, (w, h)), padding_mode="border", align_corners=False)
            errors.append((warped - img[:-1]).abs().mean(1)[torch.from_numpy(video.valid)].mean().item())
        out["noise_default" if noise is None else "noise_0"] = round(float(np.mean(errors)), 2)
    return out


def colour_classifier_miou(preset: str, train_clips: int, val_clips: int) -> float:
    n = len(CLASS_NAMES)
    config = synth_preset(preset)

    def pixels(split: str, count: int):
        videos = [SynthWorld(config, split, num_videos=count)[i] for i in range(count)]
        x = np.concatenate([v.frames.reshape(-1, 3) for v in videos]).astype(np.float64) / 255.0
        return np.c_[x, np.ones(len(x))], np.concatenate([v.semantic.ravel() for v in videos]).astype(np.int64)

    (x_tr, y_tr), (x_va, y_va) = pixels("train", train_clips), pixels("val", val_clips)
    weights = np.linalg.lstsq(x_tr, np.eye(n)[y_tr], rcond=None)[0]
    cm = np.bincount(y_va * n + (x_va @ weights).argmax(1), minlength=n * n).reshape(n, n)
    inter, present = np.diag(cm), cm.sum(1) > 0
    return round(float((inter / (cm.sum(0) + cm.sum(1) - inter))[present].mean()), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=16, help="clips per speed measurement")
    parser.add_argument("--picture", type=Path, default=None, help="also save a picture of a small-preset clip")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {
        "threads": torch.get_num_threads(),
        "speed": [speed("small", 64, args.clips), speed("standard", 128, max(args.clips // 4, 2))],
        "warp_error_255": {p: warp_error(p, 8) for p in ("tiny", "small")},
        "colour_linear_miou": {
            "tiny": colour_classifier_miou("tiny", 16, 8),
            "small": colour_classifier_miou("small", 16, 8),
        },
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.picture is not None:
        from motionrep.data.synth_viz import clip_figure

        args.picture.parent.mkdir(parents=True, exist_ok=True)
        clip_figure(SynthWorld(synth_preset("small"), "val")[1], args.picture)


if __name__ == "__main__":
    main()
