"""Cost of the paper-scale protocols' inner loops at the papers' resolutions (ViT-S/16, random weights).

* ``seg_upernet_step``: one UperNet-finetuning training step (forward + backward + AdamW) on a batch of 512² crops;
* ``seg_slide``: sliding-window inference (512² windows, stride 341) of one 512 x 1024 image with the UperNet model;
* ``flow_step``: one flow-finetuning step (encoder + Midway dynamics + DPT head, bounded Laplacian) on 320 x 384 crops;
* ``flow_tiled``: tiled full-resolution inference of one Sintel-sized pair (436 x 1024, overlap 0.5).

Prints one JSON object (and writes it to ``--out``). Times are the best of ``--repeats`` after a warm-up.

    .venv/bin/python benchmarks/bench_paper_eval.py --threads 2 --batch 2 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from motionrep.eval.paper.features import MultiLevelFeatures
from motionrep.eval.paper.flow_finetune import FlowModel, baseline_dynamics, laplacian_sums, tile_starts, tiled_flow
from motionrep.eval.paper.seg_readout import ReadoutConfig, build_seg_model, sliding_window, window_starts
from motionrep.models.vit import build_vit


def _best(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit-s16")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    seg = build_seg_model(MultiLevelFeatures(build_vit(args.model)), 19, ReadoutConfig("upernet-finetune"))
    opt = torch.optim.AdamW([p for p in seg.parameters() if p.requires_grad], lr=3e-5)
    crops, labels = torch.rand(args.batch, 3, 512, 512), torch.randint(19, (args.batch, 512, 512))

    def seg_step() -> None:
        loss = torch.nn.functional.cross_entropy(seg(crops), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    image = torch.rand(3, 512, 1024)
    seg.eval()
    slide = _best(lambda: sliding_window(seg, image, 19, 512, 341), args.repeats)
    seg.train()
    seg_time = _best(seg_step, args.repeats)

    enc = build_vit(args.model)
    flow = FlowModel(enc, baseline_dynamics(enc))
    fopt = torch.optim.AdamW(flow.parameters(), lr=2e-5)
    i1, i2 = torch.rand(args.batch, 3, 320, 384), torch.rand(args.batch, 3, 320, 384)
    gt, valid = torch.randn(args.batch, 2, 320, 384), torch.ones(args.batch, 320, 384, dtype=torch.bool)

    def flow_step() -> None:
        pred, conf = flow(i1, i2)
        total, count = laplacian_sums(pred, conf, gt, valid)
        fopt.zero_grad()
        (total / count).backward()
        fopt.step()

    flow_time = _best(flow_step, args.repeats)
    flow.eval()
    a, b = torch.rand(3, 436, 1024), torch.rand(3, 436, 1024)
    tiled = _best(lambda: tiled_flow(flow, a, b, (320, 384), 0.5), args.repeats)
    result = {
        "model": args.model,
        "batch": args.batch,
        "threads": args.threads,
        "seg_upernet_step_s": round(seg_time, 3),
        "seg_slide_512x1024_s": round(slide, 3),
        "seg_slide_windows": len(window_starts(512, 512, 341)) * len(window_starts(1024, 512, 341)),
        "flow_step_s": round(flow_time, 3),
        "flow_tiled_436x1024_s": round(tiled, 3),
        "flow_tiles": len(tile_starts(436, 320, 0.5)) * len(tile_starts(1024, 384, 0.5)),
        "cpu": platform.processor() or platform.machine(),
        "load_average": os.getloadavg()[0],
        "torch": torch.__version__,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
