"""Peak memory of the paper in-context protocol against the training-set size: streamed vs loaded in memory.

Each (mode, images) runs in a fresh subprocess on a lazy segmentation dataset (items generated per index, like
files read from disk: ``--side``² images resized to ``--size``²), with raw-pixel features and a fixed memory bank of
``--memory-size`` rows, and reports the process's peak resident memory (``ru_maxrss``):

* ``stream``: :func:`motionrep.eval.paper.incontext_fractions.incontext_run` (memory and queries in chunks);
* ``in_memory``: the former path: every resized training and validation image stacked in a ``SegSet``, then
  :func:`motionrep.eval.segmentation.incontext`.

Prints one JSON object (and writes it to ``--out``).

    .venv/bin/python benchmarks/bench_incontext_stream.py --images 100,400 \
        --out benchmarks/results/incontext_stream.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset


class LazySeg(Dataset):
    """``n`` blocky 4-class label maps with noisy images, generated on access from the item's index."""

    class_names = ["a", "b", "c", "d"]
    ignore_index = 255

    def __init__(self, n: int, side: int, seed: int):
        self.n, self.side, self.seed = n, side, seed

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + i)
        block = self.side // 8
        labels = torch.randint(0, 4, (8, 8), generator=g).repeat_interleave(block, 0).repeat_interleave(block, 1)
        image = labels[None] * 60 + torch.randint(0, 50, (3, *labels.shape), generator=g)
        return image.to(torch.uint8), labels


def run_one(mode: str, images: int, args: argparse.Namespace) -> dict:
    from motionrep.data.labeled import SegSet
    from motionrep.eval.features import PixelFeatures
    from motionrep.eval.paper.incontext_fractions import FractionConfig, incontext_run
    from motionrep.eval.paper.streams import resize_pair
    from motionrep.eval.segmentation import incontext

    torch.set_num_threads(1)
    train, val = LazySeg(images, args.side, 0), LazySeg(max(1, images // 4), args.side, 1)
    extractor = PixelFeatures(16)
    start = time.perf_counter()
    if mode == "stream":
        cfg = FractionConfig((1,), (0,), args.size, args.memory_size, k=10, workers=0)
        res = incontext_run(extractor, train, val, range(images), cfg, seed=0)
        rows, miou = res["memory_rows"], res["miou"]
    else:
        sets = []
        for data in (train, val):
            pairs = [resize_pair(*data[i], (args.size, args.size)) for i in range(len(data))]
            sets.append(
                SegSet(torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]), data.class_names)
            )
        res = incontext(extractor, sets[0], sets[1], args.memory_size, k=10)
        rows, miou = int(res.metrics["memory"]), res.metrics["miou"]
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"mode": mode, "images": images, "memory_rows": rows, "miou": miou, "seconds": seconds, "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", default="100,400", help="Comma-separated training-set sizes.")
    parser.add_argument("--side", type=int, default=384, help="Stored image side.")
    parser.add_argument("--size", type=int, default=320, help="Evaluation size (images resized to size x size).")
    parser.add_argument("--memory-size", type=int, default=20_000, help="Memory bank rows.")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, images = args.child.split(":")
        print(json.dumps(run_one(mode, int(images), args)))
        return
    runs = []
    for images in (int(x) for x in args.images.split(",")):
        for mode in ("stream", "in_memory"):
            cmd = [sys.executable, __file__, *sys.argv[1:], "--child", f"{mode}:{images}"]
            runs.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "child")}
    result = {"settings": settings, "machine": platform.processor() or platform.machine(), "runs": runs}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
